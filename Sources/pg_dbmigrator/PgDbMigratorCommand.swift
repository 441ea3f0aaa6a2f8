import ArgumentParser
import Foundation
import Logging
import PGDBMigrator
import PostgresClient

@main
struct PgDbMigratorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pg_dbmigrator",
        abstract: "Migrate a PostgreSQL database to another server.",
        discussion: """
            The migration is the default command: `pg_dbmigrator --mode online --source … --target …` runs \
            `migrate` (see `pg_dbmigrator migrate --help` for its options). A running offline or online \
            migration answers `status`, `cutover` and `abort` from another shell through the control socket in \
            its state directory.
            """,
        version: "0.3.0",
        subcommands: [MigrateCommand.self, StatusCommand.self, CutoverCommand.self, AbortCommand.self],
        defaultSubcommand: MigrateCommand.self
    )
}

struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Migrate a PostgreSQL database to another server (the default command).",
        discussion: """
            offline: copy the source once. By default (--copy-method native) the schema comes from pg_dump and \
            parallel workers stream every table with COPY inside one snapshot, each table's indexes built as it \
            lands; --copy-method dump goes through pg_dump -Fd and pg_restore instead (schema, data, then indexes \
            and constraints).

            online: create a logical replication slot with an exported snapshot, copy that snapshot, then let a \
            subscription on the target stream every later change. A Lag heartbeat shows how far behind the target \
            is; press Ctrl+C (or send SIGINT) to cut over: the tool waits until the target has applied everything \
            the source committed, syncs sequences and removes the replication objects. Ctrl+C before streaming \
            starts, a second Ctrl+C, or SIGTERM aborts and leaves the slot and subscription in place. From another \
            shell or host: `pg_dbmigrator status`, `pg_dbmigrator cutover` and `pg_dbmigrator abort` (with the same \
            --state-dir or --target), or the HTTP endpoints of --listen.

            Connection strings are anything libpq accepts: postgres:// URIs or keyword=value strings. \
            Prefer passing passwords through PG_DBMIGRATOR_SOURCE / PG_DBMIGRATOR_TARGET, PGPASSFILE \
            or ~/.pgpass rather than on the command line. Passwords never reach child processes' \
            arguments, logs or events.

            Exit status: 0 success; 1 migration failed; 64 invalid arguments; 130 cancelled by SIGINT; \
            143 cancelled by SIGTERM.
            """
    )

    @OptionGroup(title: "Servers") var servers: ServerOptions
    @OptionGroup(title: "Copy") var copy: CopyOptions
    @OptionGroup(title: "Filtering") var filter: FilterOptions
    @OptionGroup(title: "Online mode") var online: OnlineOptions
    @OptionGroup(title: "Verify") var verify: VerifyOptions
    @OptionGroup(title: "Output") var output: OutputOptions
    @OptionGroup(title: "Control") var control: ListenOptions

    /// Every argument is checked here, before anything is touched: a wrong one exits 64.
    func validate() throws {
        if servers.mode == .online && copy.dumpScope != .all {
            throw ValidationError("--dump-scope must be 'all' in online mode: the stream needs the schema and the data of the snapshot")
        }
        do {
            try makeConfig().validate()
        } catch let error as MigrationError {
            if output.json {
                // The usage error goes to stderr as ArgumentParser prints it; programs get the error object.
                let line = JSONLine.encodeFailure(
                    stage: error.stage, code: error.code, message: Flags.render(error.message), fix: error.fix.map(Flags.render))
                FileHandle.standardOutput.write(Data((line + "\n").utf8))
            }
            throw ValidationError(Flags.render(error.description))
        }
    }

    /// The migration the flags describe.
    func makeConfig() throws -> MigrationConfig {
        let (source, target) = try servers.connectionStrings()
        var settings = MigrationConfig(
            mode: servers.mode, source: source, target: target, jobs: copy.jobs,
            copyMethod: copy.copyMethod, indexJobs: copy.indexJobs, splitTablesLargerThan: copy.splitTablesLargerThan.bytes,
            dropTargetFirst: copy.dropTargetFirst, filter: filter.objectFilter,
            allowRestoreErrors: copy.allowRestoreErrors, dumpScope: copy.dumpScope, dumpPath: copy.dumpPath,
            skipAnalyze: copy.skipAnalyze, noOwner: copy.noOwner, noACL: copy.noACL, pgBinDirectory: copy.pgBinDir,
            online: try online.settings(),
            verify: verify.settings(allowRestoreErrors: copy.allowRestoreErrors))
        settings.maintenanceWorkMem = copy.maintenanceWorkMem.bytes
        settings.resume = copy.resume
        settings.stateDirectory = copy.stateDir
        settings.terminateTargetSessions = copy.terminateTargetSessions
        settings.copyRoles = copy.copyRoles
        settings.listen = control.listen
        settings.listenTokenFile = control.listenTokenFile
        settings.online.everyLagReading = output.jsonHeartbeat
        settings.lockTimeout = OnlineOptions.duration(seconds: copy.lockTimeoutSecs)
        settings.online.dropForeignSlot = online.dropForeignSlot
        return settings
    }

    func run() async throws {
        let config = try makeConfig()
        ArgumentScrubber.hide(
            (config.source.secrets + config.target.secrets + (config.online.subscriptionSource?.secrets ?? [])).map(\.value))

        let renderer = EventRenderer(json: output.json, verbose: output.verbose)
        var logger = Logger(label: "pg_dbmigrator")
        logger.logLevel = output.verbose ? .debug : .warning
        let migrator = Migrator(config: config, logger: logger) { event in renderer.render(event) }

        let task = Task { try await migrator.run() }
        let signals = SignalHandling { signal, count in
            // Online, once streaming: the first Ctrl+C means "cut over". Anything else aborts.
            if config.mode == .online && signal == SIGINT && count == 1 {
                switch migrator.control.requestCutover() {
                case .accepted, .alreadyRequested:
                    renderer.note("cutover requested (Ctrl+C again to abort instead)")
                    return
                case .refused, .ended:
                    break
                }
            }
            migrator.control.abort(.signal(signal))
            task.cancel()
        }
        signals.install()
        do {
            let outcome = try await task.value
            if let report = outcome.verifyReport {
                renderer.report(report)
                if config.mode == .verify && !report.matches {
                    renderer.failure(
                        stage: .verify, code: .verifyMismatch,
                        message: "source and target differ (\(report.problems.count) difference(s), listed above)", fix: nil
                    )
                    throw ExitCode.failure
                }
            }
            if !outcome.sequenceFailures.isEmpty {
                renderer.failure(
                    stage: .cutover, code: .sequenceSync,
                    message: "cutover complete, but \(outcome.sequenceFailures.count) sequence(s) could not be synced: "
                        + outcome.sequenceFailures.keys.sorted().joined(separator: ", "),
                    fix: "set them on the target with setval() before writing to those tables")
                throw ExitCode.failure
            }
        } catch let exit as ExitCode {
            throw exit  // the failure was rendered where it was decided
        } catch let cancelled as MigrationCancelled {
            let cause = migrator.control.abortCause ?? .signal(signals.lastSignal ?? SIGINT)
            let what =
                config.mode == .online
                ? "replication objects left in place as listed above" : "child processes stopped and temporary files removed"
            renderer.failure(
                stage: cancelled.stage, code: .cancelled,
                message: "aborted by \(cause.description) during \(cancelled.stage.rawValue); \(what)", fix: nil)
            throw ExitCode(cause.exitCode)
        } catch let error as MigrationError {
            renderer.failure(stage: error.stage, code: error.code, message: error.message, fix: error.fix)
            throw ExitCode.failure
        } catch {
            renderer.failure(stage: nil, code: .failed, message: String(describing: error), fix: nil)
            throw ExitCode.failure
        }
    }
}

struct ServerOptions: ParsableArguments {
    @Option(
        help:
            "offline: copy once (see --copy-method); online: copy a snapshot, then stream changes until cutover; verify: compare source and target; cleanup: drop what an online run left."
    )
    var mode: MigrationConfig.Mode = .offline

    @Option(help: ArgumentHelp("Source connection string (URI or keyword=value). Default: $PG_DBMIGRATOR_SOURCE.", valueName: "conninfo"))
    var source: String?

    @Option(help: ArgumentHelp("Target connection string (URI or keyword=value). Default: $PG_DBMIGRATOR_TARGET.", valueName: "conninfo"))
    var target: String?

    func connectionStrings() throws -> (ConnectionString, ConnectionString) {
        (
            try parse(source, flag: "source", variable: "PG_DBMIGRATOR_SOURCE"),
            try parse(target, flag: "target", variable: "PG_DBMIGRATOR_TARGET")
        )
    }

    private func parse(_ value: String?, flag: String, variable: String) throws -> ConnectionString {
        guard let raw = value ?? ProcessInfo.processInfo.environment[variable], !raw.isEmpty else {
            throw ValidationError("missing --\(flag) (or \(variable) in the environment)")
        }
        do {
            return try ConnectionString(raw)
        } catch {
            throw ValidationError("--\(flag) is not a valid connection string: \(error.message)")
        }
    }
}

struct CopyOptions: ParsableArguments {
    @Option(
        help: "Parallel copy workers: tables or table parts at a time (native), pg_dump/pg_restore jobs (dump). Default: CPU count, 1…8.")
    var jobs: Int = MigrationConfig.defaultJobs

    @Option(
        help: ArgumentHelp(
            "How data travels: native (COPY streamed from source to target, no dump file; the schema still comes from pg_dump) "
                + "or dump (pg_dump -Fd to disk, then pg_restore). --dump-scope schema-only/data-only always use the dump.",
            valueName: "method"))
    var copyMethod: MigrationConfig.CopyMethod = .native

    @Option(help: "Parallel index and constraint builds (native copy) and post-data pg_restore jobs. Default: --jobs.")
    var indexJobs: Int?

    @Option(
        help: ArgumentHelp(
            "Copy tables larger than this in parts (native copy), each its own COPY: by ranges of an integer primary key, "
                + "else by block ranges. A size such as 256MB or 1GB; 0 never splits.", valueName: "size"))
    var splitTablesLargerThan: ByteSize = ByteSize(bytes: MigrationConfig.defaultSplitBytes)

    @Option(
        help: ArgumentHelp(
            "maintenance_work_mem for index builds and post-data on the target (native copy): raised to this, never lowered. "
                + "Each of --index-jobs builds may use this much of the target's memory.", valueName: "size"))
    var maintenanceWorkMem: ByteSize = ByteSize(bytes: 512 * 1024 * 1024)

    @Flag(
        help: ArgumentHelp(
            "Drop and re-create the target database before restoring into it. It says first what it drops (size, tables, "
                + "connected sessions), and refuses while other sessions are connected unless --terminate-target-sessions."))
    var dropTargetFirst = false

    @Flag(help: "With --drop-target-first: end the sessions connected to the target database (they are listed first).")
    var terminateTargetSessions = false

    @Option(
        help: ArgumentHelp(
            "How long a statement may wait on a lock another session holds before the run gives up, naming that session "
                + "(pid, user, application, query). Waits are reported every 10 s.", valueName: "seconds"))
    var lockTimeoutSecs: Double = 300

    @Flag(
        help: ArgumentHelp(
            "Continue the interrupted run of this same command from its recorded progress: copied tables and parts are not "
                + "copied again; an online run that was streaming re-attaches to its slot and subscription."))
    var resume = false

    @Option(
        help: ArgumentHelp(
            "Where progress is recorded for --resume. Default: $XDG_STATE_HOME/pg_dbmigrator/<target host_port_database> "
                + "(~/.local/state/…); removed when the run completes.", valueName: "dir"))
    var stateDir: String?

    @Flag(help: "Treat pg_restore errors as warnings (listed) instead of failing.")
    var allowRestoreErrors = false

    @Option(help: "What to copy: all, schema-only or data-only.")
    var dumpScope: MigrationConfig.DumpScope = .all

    @Option(
        help: ArgumentHelp(
            "Directory for the dump (created 0700, removed after success). Default: a private directory under $TMPDIR.", valueName: "dir"))
    var dumpPath: String?

    @Flag(help: "Do not ANALYZE the target after the restore.")
    var skipAnalyze = false

    @Flag(help: "Do not restore object ownership; objects end up owned by the target user.")
    var noOwner = false

    @Flag(help: "Do not restore privileges (GRANT/REVOKE).")
    var noAcl = false

    @Flag(
        help:
            "Create on the target the roles the database needs (owners, grantees, policies' roles) that it lacks, with their attributes, memberships and settings; passwords too when the source login is a superuser."
    )
    var copyRoles = false

    @Option(help: ArgumentHelp("Directory holding pg_dump, pg_restore and vacuumdb. Default: search PATH.", valueName: "dir"))
    var pgBinDir: String?

    var noACL: Bool { noAcl }

}

struct OnlineOptions: ParsableArguments {
    @Option(help: "Logical replication slot created on the source.")
    var slotName = "pg_dbmigrator_slot"

    @Option(help: "Publication on the source; created (and dropped after cutover) when missing.")
    var publication = "pg_dbmigrator_pub"

    @Option(
        help: ArgumentHelp(
            "How the changes reach the target after the copy: subscription (CREATE SUBSCRIPTION: the target server connects to the source), relay (this process streams them from the slot and applies them on the target, which never connects to the source; its position is a replication origin on the target), or auto: a subscription when the target may create one and reaches the source (tried at Validate), else relay.",
            valueName: "auto|subscription|relay"))
    var apply: OnlineSettings.ApplyMethod = .auto

    @Option(
        help: ArgumentHelp(
            "Relay apply: target sessions that run transactions at once, committing them in the source's order (1 to 8; default 1). Transactions that touch the same rows or unique values wait for each other. On a 2-core machine two sessions were slower than one: measure before raising it.",
            valueName: "n"))
    var relaySessions: Int?

    @Option(help: "Subscription created on the target (default pg_dbmigrator_sub).")
    var subscriptionName: String?

    @Option(
        help: ArgumentHelp(
            "How the target server reaches the source, for its apply worker (file paths as seen on the target server; sslmode no weaker than --source's). Default: the settings in effect on the tool's own source connection, environment and password file included.",
            valueName: "conninfo"))
    var subscriptionSource: String?

    @Option(
        help: ArgumentHelp(
            "CaughtUp (\"ready for cutover\") fires when the target is at most this many seconds behind; FellBehind only "
                + "after three readings over twice that. Advisory only.", valueName: "seconds"))
    var lagThresholdSecs: Double = 5

    @Option(help: "Judge CaughtUp/FellBehind in bytes of lag instead of seconds (the same hysteresis).")
    var lagThresholdBytes: UInt64?

    @Option(help: "Seconds between Lag heartbeats.")
    var cutoverPollSecs: Double = 5

    @Option(help: "Milliseconds between heartbeats once caught up, and while cutover waits for the target.")
    var cutoverFastPollMs: Int = 500

    @Option(help: "Seconds cutover waits for the target to apply everything before giving up (nothing is dropped then).")
    var cutoverTimeoutSecs: Double = 300

    @Flag(help: "Keep the subscription (disabled) after cutover.")
    var keepSubscription = false

    @Flag(help: "Keep the replication slot after cutover (it retains WAL on the source until dropped).")
    var keepSlot = false

    @Flag(help: "Do not copy sequence values to the target at cutover.")
    var noSequenceSync = false

    @Flag(help: "Fail when --publication does not exist instead of creating it.")
    var noAutoCreatePublication = false

    @Flag(
        help: ArgumentHelp(
            "Before starting, remove what an interrupted run recorded in the state directory (its subscription, slot and "
                + "publication, as --mode cleanup does), then start afresh. Never drops objects this tool did not create."))
    var forceClean = false

    @Option(
        help: ArgumentHelp(
            "With --mode cleanup: also drop this replication slot although the recorded run did not create it "
                + "(e.g. one kept by --keep-slot). A slot in use by a consumer is never dropped.", valueName: "slot"))
    var dropForeignSlot: String?

    @Flag(help: "At cutover, make the source database read-only and end its sessions, so nothing is written after the barrier.")
    var freezeSourceAtCutover = false

    @Flag(help: "Set REPLICA IDENTITY FULL on published tables that have no primary key (otherwise they stop the run).")
    var setReplicaIdentityFull = false

    @Flag(help: "With --mode cleanup: list what would be dropped, drop nothing.")
    var dryRun = false

    @Option(
        help:
            "Warn when the slot holds more WAL than this, in MiB (1024×1024 bytes). Default: 10% of max_slot_wal_keep_size, or 10 GB when unlimited."
    )
    var maxRetainedWalMb: UInt64?

    func settings() throws -> OnlineSettings {
        if apply == .relay {
            let given = [
                subscriptionName.map { _ in "--subscription-name" }, subscriptionSource.map { _ in "--subscription-source" },
                keepSubscription ? "--keep-subscription" : nil,
            ].compactMap { $0 }
            if !given.isEmpty {
                throw ValidationError(
                    "\(given.joined(separator: ", ")) \(given.count == 1 ? "has" : "have") no meaning with --apply relay: no subscription is made"
                )
            }
        }
        if apply == .subscription, relaySessions != nil {
            throw ValidationError("--relay-sessions has no meaning with --apply subscription: the target's own apply worker applies")
        }
        var subscriptionSourceString: ConnectionString?
        if let subscriptionSource {
            do {
                subscriptionSourceString = try ConnectionString(subscriptionSource)
            } catch {
                throw ValidationError("--subscription-source is not a valid connection string: \(error.message)")
            }
        }
        var settings = OnlineSettings(
            slotName: slotName, publication: publication, subscriptionName: subscriptionName ?? OnlineSettings.defaultSubscriptionName,
            subscriptionSource: subscriptionSourceString, lagThresholdBytes: lagThresholdBytes,
            pollInterval: Self.duration(seconds: cutoverPollSecs), fastPollInterval: .milliseconds(cutoverFastPollMs),
            cutoverTimeout: Self.duration(seconds: cutoverTimeoutSecs), keepSubscription: keepSubscription,
            keepSlot: keepSlot, syncSequences: !noSequenceSync, autoCreatePublication: !noAutoCreatePublication,
            forceClean: forceClean, freezeSourceAtCutover: freezeSourceAtCutover, setReplicaIdentityFull: setReplicaIdentityFull)
        settings.lagThresholdSeconds = lagThresholdSecs
        settings.apply = apply
        settings.relaySessions = relaySessions ?? 1
        settings.dryRun = dryRun
        // Out-of-range values become a value the library refuses by name, never a trap.
        settings.maxRetainedWALBytes = maxRetainedWalMb.map { megabytes in
            let (bytes, overflow) = megabytes.multipliedReportingOverflow(by: 1024 * 1024)
            return overflow ? .max : bytes
        }
        return settings
    }

    /// Seconds from the command line as a duration: NaN, infinities and values past
    /// a year become a year, which validation then refuses by name.
    static func duration(seconds: Double) -> Duration {
        guard seconds.isFinite, seconds < 366 * 24 * 3600 else { return .seconds(366 * 24 * 3600) }
        return .milliseconds(Int((seconds * 1000).rounded()))
    }
}

struct VerifyOptions: ParsableArguments {
    @Option(
        help:
            "After an offline restore (and at a frozen online cutover): off, warn, or strict (a mismatch fails the run). Default: strict, warn with --allow-restore-errors."
    )
    var verify: VerifySettings.Mode?

    @Option(help: "List up to this many differing rows, by key, for each table that differs.")
    var verifyShowRows = 0

    @Option(help: "Check tables larger than this many MiB (1024×1024 bytes) in parts, in parallel (by key range or hash bucket).")
    var verifySplitMb = 128

    @Option(
        help:
            "Offline native copy: stream (digest each row as it is copied and read the target back: the source is read once), server (both servers checksum their rows after the copy: no row crosses the network), or auto: per table, where the servers hash a table's values without printing rows and it copies in binary, the source's values are hashed as the server hashes them while they pass and the target sums the same hash in its server (nothing read back); such a table copied as text, server; any other, stream."
    )
    var verifyMethod: VerifySettings.Method = .auto

    func settings(allowRestoreErrors: Bool) -> VerifySettings {
        let (bytes, overflow) = verifySplitMb.multipliedReportingOverflow(by: 1024 * 1024)
        return VerifySettings(
            mode: verify ?? (allowRestoreErrors ? .warn : .strict), showRows: verifyShowRows,
            splitBytes: overflow ? .max : bytes, method: verifyMethod)
    }
}

extension VerifySettings.Mode: ExpressibleByArgument {}
extension VerifySettings.Method: ExpressibleByArgument {}

struct ListenOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Also serve GET /status, GET /ready, POST /cutover, POST /abort and GET /metrics (Prometheus) over HTTP here. "
                + "A loopback address unless --listen-token-file is given; port 0 picks a free port (the log says which).",
            valueName: "address:port"))
    var listen: String?

    @Option(
        help: ArgumentHelp(
            "A file (mode 0600) holding the token every HTTP request must bear as 'Authorization: Bearer <token>'.", valueName: "file"
        ))
    var listenTokenFile: String?
}

struct FilterOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Only this schema (pg_dump pattern; repeatable).", valueName: "pattern"))
    var schema: [String] = []

    @Option(help: ArgumentHelp("Leave out this schema (pg_dump pattern; repeatable).", valueName: "pattern"))
    var excludeSchema: [String] = []

    @Option(help: ArgumentHelp("Only this table (pg_dump pattern, e.g. public.orders; repeatable).", valueName: "pattern"))
    var table: [String] = []

    @Option(help: ArgumentHelp("Leave out this table's data and definition (pg_dump pattern; repeatable).", valueName: "pattern"))
    var excludeTable: [String] = []

    var objectFilter: ObjectFilter {
        ObjectFilter(schemas: schema, excludeSchemas: excludeSchema, tables: table, excludeTables: excludeTable)
    }
}

struct OutputOptions: ParsableArguments {
    @Flag(help: "Write one JSON object per event to stdout (NDJSON).")
    var json = false

    @Flag(name: .shortAndLong, help: "Show event details and library debug logs on stderr.")
    var verbose = false

    @Flag(help: "Every lag reading as an event (once caught up, the default is one per --cutover-poll-secs at most, when it changed).")
    var jsonHeartbeat = false
}

extension MigrationConfig.Mode: ExpressibleByArgument {}
extension MigrationConfig.DumpScope: ExpressibleByArgument {}
extension MigrationConfig.CopyMethod: ExpressibleByArgument {}

/// A size on the command line: `1GB`, `256MB`, `512kB`, or plain bytes (powers of 1024, as PostgreSQL reads them).
struct ByteSize: ExpressibleByArgument, CustomStringConvertible {
    var bytes: Int

    init(bytes: Int) { self.bytes = bytes }

    init?(argument: String) {
        let units: [(String, Int)] = [("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)]
        let text = argument.trimmingCharacters(in: .whitespaces).uppercased()
        let (unit, factor) = units.first { text.hasSuffix($0.0) } ?? ("", 1)
        guard let number = Double(text.dropLast(unit.count).trimmingCharacters(in: .whitespaces)), number >= 0, number.isFinite
        else { return nil }
        // Past what Int holds: a value the library refuses by name, never a trap.
        let value = number * Double(factor)
        bytes = value < 0x1p62 ? Int(value) : .max
    }

    var description: String {
        let units: [(String, Int)] = [("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)]
        for (unit, factor) in units where bytes >= factor && bytes % factor == 0 { return "\(bytes / factor)\(unit)" }
        return "\(bytes)"
    }

    var defaultValueDescription: String { description }
}
extension OnlineSettings.ApplyMethod: ExpressibleByArgument {}
