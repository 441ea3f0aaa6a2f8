import Foundation
import PostgresClient

/// What a run has done so far, written to disk after every step so that a
/// run killed at any point can be continued by `--resume` without losing or
/// duplicating a row.
///
/// Holds no password: connection strings are recorded without it.
struct RunState: Codable, Sendable {
    static let currentVersion = 1

    var version = RunState.currentVersion
    /// The settings that decide what is copied and where, as the flags that set them.
    var settings: [String: String]
    var copy = CopyState()
    var online = OnlineState()
    var completed = false

    struct CopyState: Codable, Sendable {
        /// The run has begun to create or fill the target database: what is there is ours to redo.
        var targetTouched = false
        /// The target database holds the schema (pre-data) and pg_dump's small data: from here the copy is resumable.
        var targetPrepared = false
        /// The parts, as first planned: a resumed copy keeps the same ranges.
        var plan: [CopyPart]?
        /// Part key → whether its COPY was committed (`true`) or only started (`false`).
        var parts: [String: Bool] = [:]
        var postDataStarted = false
        var postDataDone = false
        /// The dump method: a finished dump that a resumed run restores again instead of dumping.
        var dumpPath: String?
        var dumpComplete = false
    }

    struct OnlineState: Codable, Sendable {
        var publicationCreated = false
        var slotCreated = false
        var subscriptionCreated = false
        var frozenDatabase: String?
        /// The cutover's barrier, once the target applied up to it and sequences were synced.
        var cutoverBarrier: String?
    }

    /// The settings of `config` that must not change between a run and its resumption.
    static func settings(of config: MigrationConfig) -> [String: String] {
        var settings: [String: String] = [
            "--mode": config.mode.rawValue,
            "--source": config.source.passwordlessKeywordValue,
            "--target": config.target.passwordlessKeywordValue,
            "--copy-method": config.copyMethod.rawValue,
            "--dump-scope": config.dumpScope.rawValue,
            "--schema": config.filter.schemas.joined(separator: ","),
            "--exclude-schema": config.filter.excludeSchemas.joined(separator: ","),
            "--table": config.filter.tables.joined(separator: ","),
            "--exclude-table": config.filter.excludeTables.joined(separator: ","),
            "--no-owner": String(config.noOwner),
            "--no-acl": String(config.noACL),
        ]
        if config.mode == .online {
            settings["--slot-name"] = config.online.slotName
            settings["--publication"] = config.online.publication
            settings["--subscription-name"] = config.online.subscriptionName
        }
        return settings
    }

    /// The settings that differ, as `--flag: was X, now Y`.
    static func changes(from recorded: [String: String], to current: [String: String]) -> [String] {
        Set(recorded.keys).union(current.keys).sorted().compactMap { flag in
            let was = recorded[flag] ?? "", now = current[flag] ?? ""
            guard was != now else { return nil }
            return "\(flag) was \(was.isEmpty ? "not set" : "'\(was)'"), now \(now.isEmpty ? "not set" : "'\(now)'")"
        }
    }
}

/// The run state on disk, shared by everything that records progress.
/// Every change is written at once: to a temporary file, flushed, then
/// renamed over the old one, so a crash leaves the old state or the new one.
final class RunStateStore: Sendable {
    let path: String
    private let state: Mutex<RunState>

    private init(path: String, state: RunState) {
        self.path = path
        self.state = Mutex(state)
    }

    var current: RunState { state.withLock { $0 } }

    /// Changes the state and writes it before returning.
    func update(_ change: (inout RunState) -> Void) {
        state.withLock { state in
            change(&state)
            Self.write(state, to: path)
        }
    }

    /// The run is complete: its state is removed, so a later `--resume` finds nothing to do.
    func finish() {
        state.withLock { $0.completed = true }
        try? FileManager.default.removeItem(atPath: path)
    }

    /// Where a run's state lives: `--state-dir`, else one directory per target
    /// database under `$XDG_STATE_HOME/pg_dbmigrator` (`~/.local/state/pg_dbmigrator`).
    static func directory(for config: MigrationConfig) -> String {
        if let directory = config.stateDirectory { return directory }
        let environment = ProcessInfo.processInfo.environment
        let base =
            environment["XDG_STATE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? ((environment["HOME"] ?? NSTemporaryDirectory()) as NSString).appendingPathComponent(".local/state")
        let target = config.target
        let key = [target["host"] ?? "", target["port"] ?? "", target.resolvedDatabase ?? ""]
            .joined(separator: "_")
            .map { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" || $0 == "." ? $0 : "-" }
        return ((base as NSString).appendingPathComponent("pg_dbmigrator") as NSString).appendingPathComponent(String(key))
    }

    /// Opens the state for this run. Without `--resume` it starts afresh;
    /// with it, it continues the recorded run, refusing a changed configuration.
    static func open(for config: MigrationConfig, stage: Stage = .validate) throws -> RunStateStore {
        let directory = directory(for: config)
        let path = (directory as NSString).appendingPathComponent("state.json")
        let settings = RunState.settings(of: config)
        do {
            try FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw MigrationError(
                stage, "cannot create the state directory \(directory): \(error.localizedDescription)",
                fix: "pass --state-dir with a writable directory")
        }
        guard config.resume else {
            let store = RunStateStore(path: path, state: RunState(settings: settings))
            store.update { _ in }
            return store
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MigrationError(
                stage, "--resume: there is no interrupted run to resume at \(path)",
                fix: "run without --resume to start, or pass the --state-dir the interrupted run used")
        }
        let recorded: RunState
        do {
            recorded = try JSONDecoder().decode(RunState.self, from: data)
        } catch {
            throw MigrationError(stage, "--resume: \(path) cannot be read (\(error))", fix: "run without --resume to start over")
        }
        guard !recorded.completed else {
            throw MigrationError(
                stage, "--resume: the run recorded at \(path) already completed; there is nothing to resume",
                fix: "run without --resume to migrate again")
        }
        let changes = RunState.changes(from: recorded.settings, to: settings)
        guard changes.isEmpty else {
            throw MigrationError(
                stage, "--resume refused: the settings differ from the interrupted run's: " + changes.joined(separator: "; "),
                fix: "rerun with the interrupted run's settings, or start over without --resume "
                    + "(--drop-target-first; online, after --mode cleanup)")
        }
        return RunStateStore(path: path, state: recorded)
    }

    private static func write(_ state: RunState, to path: String) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        guard let data = try? encoder.encode(state) else { return }
        let temporary = path + ".tmp"
        let fd = Foundation.open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { return }
        let written = data.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
        fsync(fd)
        close(fd)
        guard written == data.count else { return }
        rename(temporary, path)
    }
}
