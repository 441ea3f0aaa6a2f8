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
            offline: pg_dump the source, pg_restore into the target (schema, data, then indexes and constraints).

            Connection strings are anything libpq accepts: postgres:// URIs or keyword=value strings. \
            Prefer passing passwords through PG_DBMIGRATOR_SOURCE / PG_DBMIGRATOR_TARGET, PGPASSFILE \
            or ~/.pgpass rather than on the command line. Passwords never reach child processes' \
            arguments, logs or events.

            Exit status: 0 success; 1 migration failed; 64 invalid arguments; 130 cancelled by SIGINT; \
            143 cancelled by SIGTERM.
            """,
        version: "0.1.0"
    )

    @OptionGroup(title: "Servers") var servers: ServerOptions
    @OptionGroup(title: "Copy") var copy: CopyOptions
    @OptionGroup(title: "Filtering") var filter: FilterOptions
    @OptionGroup(title: "Output") var output: OutputOptions

    func validate() throws {
        _ = try servers.connectionStrings()
    }

    func run() async throws {
        let (source, target) = try servers.connectionStrings()
        ArgumentScrubber.hide([source.password, target.password].compactMap { $0 })
        let config = MigrationConfig(
            mode: servers.mode, source: source, target: target, jobs: copy.jobs,
            dropTargetFirst: copy.dropTargetFirst, filter: filter.objectFilter,
            allowRestoreErrors: copy.allowRestoreErrors, dumpScope: copy.dumpScope, dumpPath: copy.dumpPath,
            skipAnalyze: copy.skipAnalyze, noOwner: copy.noOwner, noACL: copy.noACL, pgBinDirectory: copy.pgBinDir)

        let renderer = EventRenderer(json: output.json, verbose: output.verbose)
        var logger = Logger(label: "pg_dbmigrator")
        logger.logLevel = output.verbose ? .debug : .warning
        let migrator = Migrator(config: config, logger: logger) { renderer.render($0) }

        let task = Task { try await migrator.run() }
        let signals = SignalHandling { _ in task.cancel() }
        signals.install()
        do {
            _ = try await task.value
        } catch let cancelled as MigrationCancelled {
            let signal = signals.firstSignal ?? SIGINT
            renderer.failure(stage: cancelled.stage, message: "cancelled by \(signal == SIGTERM ? "SIGTERM" : "SIGINT") during \(cancelled.stage.rawValue); child processes stopped and temporary files removed", fix: nil)
            throw ExitCode(128 + signal)
        } catch let error as MigrationError {
            renderer.failure(stage: error.stage, message: error.message, fix: error.fix)
            throw ExitCode.failure
        } catch {
            renderer.failure(stage: nil, message: String(describing: error), fix: nil)
            throw ExitCode.failure
        }
    }
}

struct ServerOptions: ParsableArguments {
    @Option(help: "offline: dump and restore once.")
    var mode: MigrationConfig.Mode = .offline

    @Option(help: ArgumentHelp("Source connection string (URI or keyword=value). Default: $PG_DBMIGRATOR_SOURCE.", valueName: "conninfo"))
    var source: String?

    @Option(help: ArgumentHelp("Target connection string (URI or keyword=value). Default: $PG_DBMIGRATOR_TARGET.", valueName: "conninfo"))
    var target: String?

    func connectionStrings() throws -> (ConnectionString, ConnectionString) {
        (try parse(source, flag: "source", variable: "PG_DBMIGRATOR_SOURCE"),
         try parse(target, flag: "target", variable: "PG_DBMIGRATOR_TARGET"))
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
    @Option(help: "Parallel pg_dump/pg_restore workers (default: CPU count, 1…8).")
    var jobs: Int = MigrationConfig.defaultJobs

    @Flag(help: "Drop and re-create the target database before restoring into it.")
    var dropTargetFirst = false

    @Flag(help: "Treat pg_restore errors as warnings (listed) instead of failing.")
    var allowRestoreErrors = false

    @Option(help: "What to copy: all, schema-only or data-only.")
    var dumpScope: MigrationConfig.DumpScope = .all

    @Option(help: ArgumentHelp("Directory for the dump (created 0700, removed after success). Default: a private directory under $TMPDIR.", valueName: "dir"))
    var dumpPath: String?

    @Flag(help: "Do not ANALYZE the target after the restore.")
    var skipAnalyze = false

    @Flag(help: "Do not restore object ownership; objects end up owned by the target user.")
    var noOwner = false

    @Flag(help: "Do not restore privileges (GRANT/REVOKE).")
    var noAcl = false

    @Option(help: ArgumentHelp("Directory holding pg_dump, pg_restore and vacuumdb. Default: search PATH.", valueName: "dir"))
    var pgBinDir: String?

    var noACL: Bool { noAcl }

    func validate() throws {
        guard (1...64).contains(jobs) else { throw ValidationError("--jobs must be between 1 and 64") }
    }
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
}

extension MigrationConfig.Mode: ExpressibleByArgument {}
extension MigrationConfig.DumpScope: ExpressibleByArgument {}
