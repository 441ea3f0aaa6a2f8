import Foundation
import PostgresClient

/// Everything a migration run needs to know, as one `Sendable` value.
///
/// The CLI builds one from its flags; library users build one directly.
/// Every field has a default except the two servers.
public struct MigrationConfig: Sendable {
    public enum Mode: String, Sendable, CaseIterable {
        /// One-shot copy, by ``CopyMethod``: the schema from `pg_dump` and the tables
        /// streamed with `COPY` (``CopyMethod/native``, the default), or `pg_dump`, then
        /// `pg_restore` (``CopyMethod/dump``).
        case offline
        /// Snapshot copy plus logical replication until the operator cuts over.
        case online
        /// Compare source and target, table by table; change nothing.
        case verify
        /// List, and drop, the replication objects an online run left.
        case cleanup
    }

    /// How table data travels from the source to the target.
    public enum CopyMethod: String, Sendable, CaseIterable {
        /// `COPY … TO STDOUT` streamed into `COPY … FROM STDIN`, tables split
        /// into parts, indexes built as each table lands; the schema still
        /// comes from `pg_dump`.
        case native
        /// `pg_dump -Fd` to disk, then `pg_restore`.
        case dump
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
    /// Parallel copy workers: tables (or table parts) at a time, or `pg_dump`/`pg_restore` jobs.
    public var jobs: Int
    public var copyMethod: CopyMethod
    /// Parallel index and constraint builds after the data (native copy; post-data `pg_restore` jobs).
    public var indexJobs: Int
    /// Tables larger than this (bytes on disk) are copied in parts, each its own COPY (native copy).
    public var splitTablesLargerThan: Int
    /// `maintenance_work_mem` of the native copy's index builds and post-data pass on the target
    /// (raised to this, never lowered); each of `indexJobs` builds may use this much server memory.
    public var maintenanceWorkMem: Int = 512 * 1024 * 1024
    /// Drop and re-create the target database before restoring into it. Refused for
    /// `postgres`, `template0`, `template1` and the source itself, and while other
    /// sessions are connected unless ``terminateTargetSessions``.
    public var dropTargetFirst: Bool
    /// With ``dropTargetFirst``: end the sessions connected to the target database (they are listed first).
    public var terminateTargetSessions: Bool = false
    /// How long a statement may wait on a lock another session holds (reported every 10 s, with who
    /// holds it) before the run gives up, naming that session.
    public var lockTimeout: Duration = .seconds(300)
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
    /// Create on the target the roles the migrated database needs and the target lacks (see ``RoleCopy``).
    public var copyRoles: Bool = false
    /// Directory holding `pg_dump`, `pg_restore` and `vacuumdb`; searched on `PATH` when nil.
    public var pgBinDirectory: String?
    /// Continue the interrupted run recorded in the state directory instead of starting afresh.
    public var resume: Bool = false
    /// Where progress is recorded for `--resume`; nil: one directory per target database under
    /// `$XDG_STATE_HOME/pg_dbmigrator` (`~/.local/state/pg_dbmigrator`).
    public var stateDirectory: String? = nil
    /// Serve status, readiness, cutover and metrics over HTTP at this `host:port` (see ``ControlServer``);
    /// a loopback address unless ``listenTokenFile`` is set. Port 0 picks a free one (its event says which).
    public var listen: String? = nil
    /// A file holding the token that HTTP requests must bear (`Authorization: Bearer …`); readable by its owner only.
    public var listenTokenFile: String? = nil
    /// Settings of the online path (ignored offline).
    public var online: OnlineSettings
    /// Verification: after an offline restore, at a frozen online cutover, or the whole of `--mode verify`.
    public var verify: VerifySettings

    public init(
        mode: Mode = .offline,
        source: ConnectionString,
        target: ConnectionString,
        jobs: Int = MigrationConfig.defaultJobs,
        copyMethod: CopyMethod = .native,
        indexJobs: Int? = nil,
        splitTablesLargerThan: Int = MigrationConfig.defaultSplitBytes,
        dropTargetFirst: Bool = false,
        filter: ObjectFilter = ObjectFilter(),
        allowRestoreErrors: Bool = false,
        dumpScope: DumpScope = .all,
        dumpPath: String? = nil,
        skipAnalyze: Bool = false,
        noOwner: Bool = false,
        noACL: Bool = false,
        pgBinDirectory: String? = nil,
        online: OnlineSettings = OnlineSettings(),
        verify: VerifySettings = VerifySettings()
    ) {
        self.mode = mode
        self.source = source
        self.target = target
        self.jobs = jobs
        self.copyMethod = copyMethod
        self.indexJobs = indexJobs ?? jobs
        self.splitTablesLargerThan = splitTablesLargerThan
        self.dropTargetFirst = dropTargetFirst
        self.filter = filter
        self.allowRestoreErrors = allowRestoreErrors
        self.dumpScope = dumpScope
        self.dumpPath = dumpPath
        self.skipAnalyze = skipAnalyze
        self.noOwner = noOwner
        self.noACL = noACL
        self.pgBinDirectory = pgBinDirectory
        self.online = online
        self.verify = verify
    }

    /// Tables above this are split into parts for the native copy.
    public static let defaultSplitBytes = 1024 * 1024 * 1024

    /// The machine's CPU count, clamped to 1…8.
    public static var defaultJobs: Int { min(max(ProcessInfo.processInfo.activeProcessorCount, 1), 8) }
}

/// How the online path names its replication objects, watches lag and cuts over.
public struct OnlineSettings: Sendable {
    /// Logical replication slot created on the source (with an exported snapshot).
    public var slotName: String
    /// Publication on the source; created (and dropped after cutover) when it does not exist.
    public var publication: String
    /// Subscription created on the target, attached to the slot.
    public var subscriptionName: String
    /// The connection string the target's apply worker uses to reach the source; `source` when nil.
    public var subscriptionSource: ConnectionString?
    /// `CaughtUp` fires when the lag is at or below this many bytes; nil: judged in seconds
    /// (``lagThresholdSeconds``). Advisory only.
    public var lagThresholdBytes: UInt64?
    /// `CaughtUp` fires when the target is at most this many seconds behind (when no byte threshold is given).
    public var lagThresholdSeconds: Double = 5
    /// Emit every lag reading as an event, instead of at most one per `pollInterval` once caught up
    /// (and then only when the lag changed, or a minute passed).
    public var everyLagReading: Bool = false
    /// Lag heartbeat interval.
    public var pollInterval: Duration
    /// Heartbeat interval once within the threshold, and while cutover waits for the barrier.
    public var fastPollInterval: Duration
    /// How long cutover waits for the target to apply up to the barrier before giving up (dropping nothing).
    public var cutoverTimeout: Duration
    public var keepSubscription: Bool
    public var keepSlot: Bool
    public var syncSequences: Bool
    /// Fail instead of creating the publication when it does not exist.
    public var autoCreatePublication: Bool
    /// Before starting, remove what the interrupted run recorded in the state directory
    /// created (as `--mode cleanup` does), then start afresh.
    public var forceClean: Bool
    /// `--mode cleanup`: also drop this slot although the recorded run did not create it
    /// (one kept by `--keep-slot`, say). A slot with a consumer attached is never dropped.
    public var dropForeignSlot: String? = nil
    /// Warn when the slot holds more WAL than this; nil: 10% of `max_slot_wal_keep_size`, or 10 GB when that is unlimited.
    public var maxRetainedWALBytes: UInt64? = nil
    /// `--mode cleanup` lists what it would drop and drops nothing.
    public var dryRun: Bool = false
    /// Make the source database read-only at cutover so nothing can be written after the barrier.
    public var freezeSourceAtCutover: Bool
    /// `ALTER TABLE … REPLICA IDENTITY FULL` on published tables that have neither a primary key nor a replica identity.
    public var setReplicaIdentityFull: Bool
    /// How long the apply worker may fail (errors or not running, nothing applied) before the run ends with its error.
    public var applyFailureGrace: Duration
    /// How the changes reach the target after the copy.
    public var apply: ApplyMethod = .auto
    /// Target sessions relay apply runs transactions on at once (1 to ``maximumRelaySessions``), committing
    /// them in the source's order. One by default: on a 2-core machine several were slower than one.
    public var relaySessions = 1
    public static let maximumRelaySessions = 8

    public enum ApplyMethod: String, Sendable, CaseIterable {
        /// A subscription when the target may create one and reaches the source (tried from the target
        /// server at Validate, before anything is made), relay apply otherwise; Validate says which and why.
        /// A ``OnlineSettings/subscriptionSource`` or ``OnlineSettings/keepSubscription`` asks for a subscription.
        case auto
        /// `CREATE SUBSCRIPTION` on the target: its own apply worker connects to the source.
        case subscription
        /// This process streams the slot's changes and applies them on the target (``RelayApplier``):
        /// the target never connects to the source, and its login needs no right to create subscriptions.
        case relay
    }

    /// The replication origin relay apply keeps its position in, on the target (`pg_` names are reserved).
    var relayOrigin: String { "dbmigrator_" + slotName }

    /// The subscription's name unless one is given.
    public static let defaultSubscriptionName = "pg_dbmigrator_sub"

    /// The target sessions that apply the changes, for lock waits to name what holds them up.
    var applyingSessions: LockWait.Blockers {
        apply == .relay ? .application(RelayApplier.applicationName(slot: slotName)) : .subscription(subscriptionName)
    }

    /// Reads how far the target is behind, wherever the changes are applied.
    var lagMonitor: LagMonitor { LagMonitor(slotName: slotName, subscriptionName: apply == .relay ? nil : subscriptionName) }

    public init(
        slotName: String = "pg_dbmigrator_slot", publication: String = "pg_dbmigrator_pub",
        subscriptionName: String = defaultSubscriptionName, subscriptionSource: ConnectionString? = nil,
        lagThresholdBytes: UInt64? = nil, pollInterval: Duration = .seconds(5),
        fastPollInterval: Duration = .milliseconds(500), cutoverTimeout: Duration = .seconds(300),
        keepSubscription: Bool = false, keepSlot: Bool = false, syncSequences: Bool = true,
        autoCreatePublication: Bool = true, forceClean: Bool = false, freezeSourceAtCutover: Bool = false,
        setReplicaIdentityFull: Bool = false, applyFailureGrace: Duration = .seconds(60)
    ) {
        self.slotName = slotName
        self.publication = publication
        self.subscriptionName = subscriptionName
        self.subscriptionSource = subscriptionSource
        self.lagThresholdBytes = lagThresholdBytes
        self.pollInterval = pollInterval
        self.fastPollInterval = fastPollInterval
        self.cutoverTimeout = cutoverTimeout
        self.keepSubscription = keepSubscription
        self.keepSlot = keepSlot
        self.syncSequences = syncSequences
        self.autoCreatePublication = autoCreatePublication
        self.forceClean = forceClean
        self.freezeSourceAtCutover = freezeSourceAtCutover
        self.setReplicaIdentityFull = setReplicaIdentityFull
        self.applyFailureGrace = applyFailureGrace
    }
}

/// Which schemas and tables take part, as `pg_dump` patterns
/// (`-n`, `-N`, `-t`, `-T`: `*` and `?` wildcards, case folded unless double-quoted),
/// resolved once on the source by ``TableSet`` with `pg_dump`'s own rules.
public struct ObjectFilter: Sendable, Equatable, Codable {
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
}
