/// The comment this tool puts on the publication and subscription it creates,
/// naming the run: cleanup, `--force-clean`, aborts and cutover drop an object
/// only when it carries this run's mark, so a user's object of the same name,
/// or another run's, is never dropped. (A replication slot carries no comment:
/// only the run state says a slot is ours.)
enum OwnershipMark {
    static let prefix = "created by pg_dbmigrator"

    /// The comment on an object created by run `runID`.
    static func text(runID: String) -> String {
        runID == legacyRunID ? "\(prefix); dropped after cutover" : "\(prefix) run \(runID); dropped after cutover"
    }

    /// The run id of a state recorded before runs had one: its objects carry the mark of that time.
    static let legacyRunID = "before-run-ids"

    enum Owner: Equatable {
        /// Created by this run.
        case thisRun
        /// Created by another run of this tool (or an older version of it).
        case anotherRun
        /// No mark: the user's own (or another tool's).
        case notUs
    }

    static func owner(ofObjectCommented comment: String?, runID: String?) -> Owner {
        guard let comment, comment.hasPrefix(prefix) else { return .notUs }
        if let runID, comment == text(runID: runID) { return .thisRun }
        return .anotherRun
    }
}

extension OwnershipMark.Owner {
    /// Why an object that is not this run's is left alone, for messages.
    var reason: String {
        switch self {
        case .thisRun: "this run created it"
        case .anotherRun: "another pg_dbmigrator run created it (its comment says so)"
        case .notUs: "pg_dbmigrator did not create it"
        }
    }
}
