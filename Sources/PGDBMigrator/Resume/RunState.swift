import Foundation
import PostgresClient

/// What a run has done so far, written to disk after every step so that a
/// run killed at any point can be continued by `--resume` without losing or
/// duplicating a row.
///
/// Holds no password: connection strings are recorded without it.
struct RunState: Codable, Sendable {
    static let currentVersion = 2

    var version = RunState.currentVersion
    /// Names this run on the objects it creates (see `OwnershipMark`): what carries
    /// another run's mark, or none, is not ours to drop.
    var runID = UUID().uuidString.lowercased()
    /// The settings that decide what is copied and where, as the flags that set them.
    var settings: [String: String]
    var copy = CopyState()
    var online = OnlineState()
    /// What the run migrates, as resolved when it began: a resumed run must find the same.
    var tables: TableSet?

    struct CopyState: Codable, Sendable {
        /// The run has begun to create or fill the target database: what is there is ours to redo.
        var targetTouched = false
        /// The target database holds the schema (pre-data) and pg_dump's small data: from here the copy is resumable.
        var targetPrepared = false
        var postDataStarted = false
        var postDataDone = false
        /// The dump method: a finished dump that a resumed run restores again instead of dumping.
        var dumpPath: String?
        var dumpComplete = false
        /// Roles this run created on the target (`copyRoles`), listed at Complete; never dropped.
        var rolesCreated: [String]?
    }

    struct OnlineState: Codable, Sendable {
        var publicationCreated = false
        /// The slot of the recorded `--slot-name` is ours: a slot carries no mark, so only this says so.
        var slotCreated = false
        var subscriptionCreated = false
        /// Relay apply's replication origin on the target, once this run set out to create it.
        var relayOrigin: String?
        /// The source database this run made read-only (it was not before), so undoing it is ours to do.
        var frozenDatabase: String?
        /// The cutover's barrier, once the target applied up to it and sequences were synced.
        var cutoverBarrier: String?
        /// The source database the slot and publication were made on (`system_identifier/database oid`):
        /// cleanup refuses to drop objects of those names on any other.
        var sourceIdentity: String?
    }

    /// Whether the run got far enough to leave anything behind: such a state is
    /// only ever continued (`--resume`) or removed (`--mode cleanup`), never
    /// overwritten by a new run. A run that failed at Validate left nothing.
    var hasProgress: Bool {
        copy.targetTouched || copy.dumpComplete || online.publicationCreated || online.slotCreated
            || online.subscriptionCreated || online.relayOrigin != nil || online.frozenDatabase != nil || online.cutoverBarrier != nil
    }

    /// Whether the slot `name` on the source is the one this run created.
    func ownsSlot(named name: String) -> Bool {
        online.slotCreated && settings[Setting.slotName.rawValue] == name
    }

    /// The settings of `config` that must not change between a run and its resumption.
    static func settings(of config: MigrationConfig) -> [String: String] {
        var settings: [Setting: String] = [
            .mode: config.mode.rawValue,
            .source: config.source.secretFreeKeywordValue,
            .target: config.target.secretFreeKeywordValue,
            .copyMethod: config.copyMethod.rawValue,
            .dumpScope: config.dumpScope.rawValue,
            .schemas: config.filter.schemas.joined(separator: ","),
            .excludeSchemas: config.filter.excludeSchemas.joined(separator: ","),
            .tables: config.filter.tables.joined(separator: ","),
            .excludeTables: config.filter.excludeTables.joined(separator: ","),
            .noOwner: String(config.noOwner),
            .noACL: String(config.noACL),
        ]
        if config.mode == .online {
            settings[.slotName] = config.online.slotName
            settings[.publication] = config.online.publication
            settings[.subscriptionName] = config.online.subscriptionName
            if config.online.apply == .relay { settings[.apply] = config.online.apply.rawValue }
        }
        return Dictionary(uniqueKeysWithValues: settings.map { ($0.key.rawValue, $0.value) })
    }

    /// What the run recorded for `setting`.
    func setting(_ setting: Setting) -> String? { settings[setting.rawValue] }

    /// The settings that differ, as `` `setting` was X, now Y ``.
    static func changes(from recorded: [String: String], to current: [String: String]) -> [String] {
        Set(recorded.keys).union(current.keys).sorted().compactMap { key in
            let was = recorded[key] ?? "", now = current[key] ?? ""
            guard was != now else { return nil }
            let name = Setting(rawValue: key)?.mention ?? key
            return "\(name) was \(was.isEmpty ? "not set" : "'\(was)'"), now \(now.isEmpty ? "not set" : "'\(now)'")"
        }
    }
}

extension RunState {
    /// State written before 0.3 keyed its settings by the CLI's flags.
    private static let legacyKeys: [String: Setting] = [
        "--mode": .mode, "--source": .source, "--target": .target, "--copy-method": .copyMethod, "--dump-scope": .dumpScope,
        "--schema": .schemas, "--exclude-schema": .excludeSchemas, "--table": .tables, "--exclude-table": .excludeTables,
        "--no-owner": .noOwner, "--no-acl": .noACL, "--slot-name": .slotName, "--publication": .publication,
        "--subscription-name": .subscriptionName,
    ]

    private static func currentKeys(_ settings: [String: String]) -> [String: String] {
        Dictionary(settings.map { (legacyKeys[$0.key]?.rawValue ?? $0.key, $0.value) }, uniquingKeysWith: { first, _ in first })
    }

    private enum CodingKeys: String, CodingKey { case version, runID, settings, copy, online, tables }

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        version = try container.decode(Int.self, forKey: .version)
        // A state written before runs had an id: its objects carry the mark of that time.
        runID = try container.decodeIfPresent(String.self, forKey: .runID) ?? OwnershipMark.legacyRunID
        settings = Self.currentKeys(try container.decode([String: String].self, forKey: .settings))
        copy = try container.decode(CopyState.self, forKey: .copy)
        online = try container.decode(OnlineState.self, forKey: .online)
        tables = try container.decodeIfPresent(TableSet.self, forKey: .tables)
    }
}

/// The run state on disk, shared by everything that records progress.
///
/// `state.json` is small and rewritten on each change: to a temporary file,
/// flushed, then renamed over the old one, so a crash leaves the old state or
/// the new one. The copy's plan is written once (`plan.json`), and each part
/// started or committed is a line appended to `parts.log` and flushed, so
/// recording progress costs the same for the ten-thousandth table as for the first.
final class RunStateStore: Sendable {
    let path: String
    private let directory: String
    private let state: Mutex<RunState>
    private let log = Mutex(())

    private init(path: String, state: RunState) {
        self.path = path
        directory = (path as NSString).deletingLastPathComponent
        self.state = Mutex(state)
    }

    var current: RunState { state.withLock { $0 } }

    /// Changes the state and writes it before returning; throws when it cannot be
    /// written, because progress that is not recorded could be copied twice.
    func update(_ change: (inout RunState) -> Void) throws {
        try state.withLock { state in
            change(&state)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try Self.write(try encoder.encode(state), to: path)
        }
    }

    private var planPath: String { (directory as NSString).appendingPathComponent("plan.json") }
    private var partsPath: String { (directory as NSString).appendingPathComponent("parts.log") }

    /// Starts recording a copy of `parts`: the plan, and an empty log.
    func recordPlan(_ parts: [CopyPart]) throws {
        try Self.write(try JSONEncoder().encode(parts), to: planPath)
        try Self.write(Data(), to: partsPath)
    }

    /// The recorded plan, if a copy was planned.
    var plan: [CopyPart]? {
        FileManager.default.contents(atPath: planPath).flatMap { try? JSONDecoder().decode([CopyPart].self, from: $0) }
    }

    enum PartEvent: String {
        case started, committed, reset
    }

    func record(_ event: PartEvent, part key: String) throws {
        try log.withLock { _ in
            let fd = Foundation.open(partsPath, O_WRONLY | O_CREAT | O_APPEND, 0o600)
            guard fd >= 0 else { throw Self.writeError(partsPath) }
            defer { close(fd) }
            let line = Array("\(event.rawValue) \(key)\n".utf8)
            guard Foundation.write(fd, line, line.count) == line.count, fsync(fd) == 0 else { throw Self.writeError(partsPath) }
        }
    }

    /// Part key → committed (`true`) or only started (`false`), from the log.
    var parts: [String: Bool] {
        guard let text = try? String(contentsOfFile: partsPath, encoding: .utf8) else { return [:] }
        var parts: [String: Bool] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 1).map(String.init)
            guard fields.count == 2, let event = PartEvent(rawValue: fields[0]) else { continue }  // a torn last line
            switch event {
            case .started: parts[fields[1]] = parts[fields[1]] ?? false
            case .committed: parts[fields[1]] = true
            case .reset: parts[fields[1]] = nil
            }
        }
        return parts
    }

    /// Records the tables a fresh run migrates; a resumed run must find the same ones
    /// (a table created, dropped or renamed since would be copied, published and
    /// verified by one run and not the other).
    func checkTables(_ tables: TableSet, of config: MigrationConfig, stage: Stage = .validate) throws {
        guard let recorded = current.tables else {
            try update { $0.tables = tables }
            return
        }
        guard recorded == tables else {
            throw MigrationError(
                stage,
                "the tables to migrate changed since the interrupted run began: "
                    + recorded.differences(from: tables).joined(separator: ", "),
                fix: "undo that schema change on the source, or start over: "
                    + Cleanup.command(recordedIn: current, config: config), code: .tableSet)
        }
    }

    /// Forgets a copy's plan and parts (a copy that starts over).
    func forgetCopy() {
        try? FileManager.default.removeItem(atPath: planPath)
        try? FileManager.default.removeItem(atPath: partsPath)
    }

    /// The run is complete: its state is removed, so a later `--resume` finds nothing to do.
    func finish() {
        forgetCopy()
        try? FileManager.default.removeItem(atPath: path)
    }

    /// `state.json` of the run `config` describes.
    static func statePath(for config: MigrationConfig) -> String {
        (directory(for: config) as NSString).appendingPathComponent("state.json")
    }

    /// Removes the recorded progress of the run `config` describes (`--mode cleanup`).
    static func discard(for config: MigrationConfig) {
        RunStateStore(path: statePath(for: config), state: RunState(settings: [:])).finish()
    }

    /// Where a run's state lives: `--state-dir`, else one directory per target
    /// database under `$XDG_STATE_HOME/pg_dbmigrator` (`~/.local/state/pg_dbmigrator`).
    static func directory(for config: MigrationConfig) -> String {
        directory(given: config.stateDirectory, target: config.target)
    }

    static func directory(given: String?, target: ConnectionString) -> String {
        if let directory = given { return directory }
        let environment = ProcessInfo.processInfo.environment
        let base =
            environment["XDG_STATE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? ((environment["HOME"] ?? NSTemporaryDirectory()) as NSString).appendingPathComponent(".local/state")
        let key = [target["host"] ?? "", target["port"] ?? "", target.resolvedDatabase ?? ""]
            .joined(separator: "_")
            .map { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" || $0 == "." ? $0 : "-" }
        return ((base as NSString).appendingPathComponent("pg_dbmigrator") as NSString).appendingPathComponent(String(key))
    }

    /// Creates the state directory (0700) if needed and returns its path.
    static func prepareDirectory(for config: MigrationConfig) throws -> String {
        let directory = directory(for: config)
        do {
            try FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw MigrationError(
                .validate, "cannot create the state directory \(directory): \(error.localizedDescription)",
                fix: "pass \(Setting.stateDirectory) with a writable directory")
        }
        return directory
    }

    /// The state an earlier run recorded for `config`'s state directory, if any; throws when it cannot be read.
    static func recorded(for config: MigrationConfig, stage: Stage = .validate) throws -> RunState? {
        let path = statePath(for: config)
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        do {
            return try JSONDecoder().decode(RunState.self, from: data)
        } catch {
            throw MigrationError(
                stage, "the recorded run state \(path) cannot be read (\(error))",
                fix: "look at it; remove the state directory by hand only once you know what that run left behind", code: .runState)
        }
    }

    /// Opens the state for this run. Without `--resume` it starts afresh, but
    /// never over an interrupted run's record (that is refused, naming `--resume`
    /// and `--mode cleanup`); with it, it continues the recorded run, refusing a
    /// changed configuration.
    static func open(for config: MigrationConfig, stage: Stage = .validate) throws -> RunStateStore {
        let path = statePath(for: config)
        let settings = RunState.settings(of: config)
        _ = try prepareDirectory(for: config)
        let existing = try recorded(for: config, stage: stage)
        guard config.resume else {
            if let existing, existing.hasProgress {
                throw MigrationError(
                    stage,
                    "an interrupted \(existing.setting(.mode) ?? "") run is recorded in \(path); "
                        + "starting afresh would forget what it left behind, so nothing was changed",
                    fix: "continue it: rerun that command with \(Setting.resume); or remove what it left: "
                        + Cleanup.command(recordedIn: existing, config: config), code: .runState)
            }
            let store = RunStateStore(path: path, state: RunState(settings: settings))
            store.forgetCopy()
            try store.update { _ in }
            return store
        }
        guard let recorded = existing else {
            throw MigrationError(
                stage, "\(Setting.resume): there is no interrupted run to resume at \(path)",
                fix: "run without \(Setting.resume) to start, or pass the \(Setting.stateDirectory) the interrupted run used",
                code: .runState)
        }
        let changes = RunState.changes(from: recorded.settings, to: settings)
        guard changes.isEmpty else {
            throw MigrationError(
                stage, "\(Setting.resume) refused: the settings differ from the interrupted run's: " + changes.joined(separator: "; "),
                fix: "rerun with the interrupted run's settings; or, to start over, first remove what it left with "
                    + Cleanup.command(recordedIn: recorded, config: config), code: .runState)
        }
        return RunStateStore(path: path, state: recorded)
    }

    /// Writes `data` to `path` durably: a temporary file, flushed, renamed over it.
    private static func write(_ data: Data, to path: String) throws {
        let temporary = path + ".tmp"
        let fd = Foundation.open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw writeError(temporary) }
        let written = data.withUnsafeBytes { data.isEmpty ? 0 : Foundation.write(fd, $0.baseAddress, $0.count) }
        let flushed = fsync(fd) == 0
        close(fd)
        guard written == data.count, flushed, rename(temporary, path) == 0 else { throw writeError(path) }
    }

    private static func writeError(_ path: String) -> MigrationError {
        MigrationError(
            .validate, "cannot record progress in \(path): \(String(cString: strerror(errno)))",
            fix:
                "free space there or pass \(Setting.stateDirectory) with a writable directory; progress that is not recorded could be copied twice"
        )
    }
}
