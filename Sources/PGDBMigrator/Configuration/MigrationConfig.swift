import Foundation
import PostgresClient

/// Everything a migration run needs to know, as one `Sendable` value.
///
/// The CLI builds one from its flags; library users build one directly.
/// Every field has a default except the two servers.
public struct MigrationConfig: Sendable {
    public enum Mode: String, Sendable, CaseIterable {
        /// One-shot copy: `pg_dump`, then `pg_restore`.
        case offline
        /// Snapshot copy plus logical replication until the operator cuts over.
        case online
    }

    /// Which parts of the database the dump carries.
    public enum DumpScope: String, Sendable, CaseIterable {
        case all
        case schemaOnly = "schema-only"
        case dataOnly = "data-only"
    }

    public var mode: Mode
    public var source: ConnectionString
    public var target: ConnectionString
    /// Parallel `pg_dump`/`pg_restore` workers.
    public var jobs: Int
    /// Drop and re-create the target database before restoring into it.
    public var dropTargetFirst: Bool
    public var filter: ObjectFilter
    /// Treat `pg_restore` errors as warnings (listed) instead of failing the run.
    public var allowRestoreErrors: Bool
    public var dumpScope: DumpScope
    /// Where the dump directory goes; a private temporary directory when nil.
    public var dumpPath: String?
    public var skipAnalyze: Bool
    /// Do not restore ownership (objects end up owned by the target user).
    public var noOwner: Bool
    /// Do not restore privileges (GRANT/REVOKE).
    public var noACL: Bool
    /// Directory holding `pg_dump`, `pg_restore` and `vacuumdb`; searched on `PATH` when nil.
    public var pgBinDirectory: String?

    public init(
        mode: Mode = .offline,
        source: ConnectionString,
        target: ConnectionString,
        jobs: Int = MigrationConfig.defaultJobs,
        dropTargetFirst: Bool = false,
        filter: ObjectFilter = ObjectFilter(),
        allowRestoreErrors: Bool = false,
        dumpScope: DumpScope = .all,
        dumpPath: String? = nil,
        skipAnalyze: Bool = false,
        noOwner: Bool = false,
        noACL: Bool = false,
        pgBinDirectory: String? = nil
    ) {
        self.mode = mode
        self.source = source
        self.target = target
        self.jobs = jobs
        self.dropTargetFirst = dropTargetFirst
        self.filter = filter
        self.allowRestoreErrors = allowRestoreErrors
        self.dumpScope = dumpScope
        self.dumpPath = dumpPath
        self.skipAnalyze = skipAnalyze
        self.noOwner = noOwner
        self.noACL = noACL
        self.pgBinDirectory = pgBinDirectory
    }

    /// The machine's CPU count, clamped to 1…8.
    public static var defaultJobs: Int { min(max(ProcessInfo.processInfo.activeProcessorCount, 1), 8) }
}

/// Which schemas and tables take part, as `pg_dump` patterns
/// (`-n`, `-N`, `-t`, `-T`: `*` and `?` wildcards, case folded unless double-quoted).
public struct ObjectFilter: Sendable, Equatable {
    public var schemas: [String]
    public var excludeSchemas: [String]
    public var tables: [String]
    public var excludeTables: [String]

    public init(schemas: [String] = [], excludeSchemas: [String] = [], tables: [String] = [], excludeTables: [String] = []) {
        self.schemas = schemas
        self.excludeSchemas = excludeSchemas
        self.tables = tables
        self.excludeTables = excludeTables
    }

    public var isEmpty: Bool { self == ObjectFilter() }

    /// The `pg_dump` arguments that apply this filter.
    var pgDumpArguments: [String] {
        schemas.map { "--schema=\($0)" } + excludeSchemas.map { "--exclude-schema=\($0)" }
            + tables.map { "--table=\($0)" } + excludeTables.map { "--exclude-table=\($0)" }
    }
}
