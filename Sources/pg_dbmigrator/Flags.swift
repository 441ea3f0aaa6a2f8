import PGDBMigrator

/// The library names its settings by property (`` `online.slotName` ``); the CLI's users
/// typed flags. Every message, fix and string detail the CLI shows goes through ``Flags/render(_:)``.
enum Flags {
    /// `text` with each setting the library mentions written as the flag that sets it; a
    /// cleanup the library describes by its settings becomes the command line that runs it.
    static func render(_ text: String) -> String {
        MigrationConfig.Setting.render(text, \.flag)
            .replacingOccurrences(of: "--mode cleanup --source", with: "pg_dbmigrator --mode cleanup --source")
    }

    static func render(_ detail: [String: EventValue]) -> [String: EventValue] {
        detail.mapValues { value in
            switch value {
            case .string(let text): .string(render(text))
            case .list(let items): .list(items.map(render))
            default: value
            }
        }
    }

    static func render(_ event: MigrationEvent) -> MigrationEvent {
        var event = event
        event.message = render(event.message)
        event.detail = render(event.detail)
        return event
    }
}

extension MigrationConfig.Setting {
    /// The flag that sets it (for a setting on by default, the flag that turns it off).
    var flag: String {
        switch self {
        case .mode: "--mode"
        case .source: "--source"
        case .target: "--target"
        case .jobs: "--jobs"
        case .indexJobs: "--index-jobs"
        case .copyMethod: "--copy-method"
        case .splitTablesLargerThan: "--split-tables-larger-than"
        case .maintenanceWorkMem: "--maintenance-work-mem"
        case .dropTargetFirst: "--drop-target-first"
        case .terminateTargetSessions: "--terminate-target-sessions"
        case .lockTimeout: "--lock-timeout-secs"
        case .allowRestoreErrors: "--allow-restore-errors"
        case .dumpScope: "--dump-scope"
        case .dumpPath: "--dump-path"
        case .skipAnalyze: "--skip-analyze"
        case .noOwner: "--no-owner"
        case .noACL: "--no-acl"
        case .copyRoles: "--copy-roles"
        case .pgBinDirectory: "--pg-bin-dir"
        case .resume: "--resume"
        case .stateDirectory: "--state-dir"
        case .listen: "--listen"
        case .listenTokenFile: "--listen-token-file"
        case .schemas: "--schema"
        case .excludeSchemas: "--exclude-schema"
        case .tables: "--table"
        case .excludeTables: "--exclude-table"
        case .slotName: "--slot-name"
        case .publication: "--publication"
        case .subscriptionName: "--subscription-name"
        case .subscriptionSource: "--subscription-source"
        case .apply: "--apply"
        case .relaySessions: "--relay-sessions"
        case .lagThresholdBytes: "--lag-threshold-bytes"
        case .lagThresholdSeconds: "--lag-threshold-secs"
        case .everyLagReading: "--json-heartbeat"
        case .pollInterval: "--cutover-poll-secs"
        case .fastPollInterval: "--cutover-fast-poll-ms"
        case .cutoverTimeout: "--cutover-timeout-secs"
        case .keepSubscription: "--keep-subscription"
        case .keepSlot: "--keep-slot"
        case .syncSequences: "--no-sequence-sync"
        case .autoCreatePublication: "--no-auto-create-publication"
        case .forceClean: "--force-clean"
        case .dropForeignSlot: "--drop-foreign-slot"
        case .maxRetainedWALBytes: "--max-retained-wal-mb"
        case .dryRun: "--dry-run"
        case .freezeSourceAtCutover: "--freeze-source-at-cutover"
        case .setReplicaIdentityFull: "--set-replica-identity-full"
        case .verifyMode: "--verify"
        case .verifyShowRows: "--verify-show-rows"
        case .verifySplitBytes: "--verify-split-mb"
        }
    }
}
