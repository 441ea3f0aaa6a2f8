import PostgresClient

/// Logical replication does not carry sequence values: at cutover every
/// sequence of the migrated set (owned, identity and free-standing) is set
/// on the target to the source's `last_value`/`is_called`, so the first
/// INSERT after cutover does not collide with a replicated row.
struct SequenceSync {
    /// The migration's sequences (``TableSet/sequences``).
    var sequences: [QualifiedName]

    struct Result {
        var synced: Int
        /// Sequence name (as `quote_ident` prints it) → why it failed.
        var failures: [String: String]
    }

    func run(source: Connection, target: Connection) async throws -> Result {
        var synced = 0
        var failures: [String: String] = [:]
        for sequence in sequences {
            let shown = sequence.shown
            do {
                let state = try await source.query("SELECT last_value::text, is_called::text FROM \(sequence)").rows[0]
                try await target.query("SELECT setval($1::regclass, $2::bigint, $3::bool)", [sequence.description, state[0], state[1]])
                synced += 1
            } catch let error as PostgresError where !ControlSessions.isConnectionLoss(error) {
                // A lost connection is not this sequence's failure: it is thrown, and the sync run again.
                failures[shown] = error.description
            }
        }
        return Result(synced: synced, failures: failures)
    }
}
