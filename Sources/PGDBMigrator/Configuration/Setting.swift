extension MigrationConfig {
    /// A setting of the migration, as messages name it.
    ///
    /// The library speaks of its settings by their property path (`online.slotName`,
    /// written between backticks in messages and fixes: see ``mention``); a front end
    /// renders each mention in its own words (the CLI as its flag, `--slot-name`). So a
    /// library caller reads the names it set, and the CLI's users the flags they typed.
    public enum Setting: String, Sendable, CaseIterable, CustomStringConvertible {
        case mode, source, target, jobs, indexJobs, copyMethod, splitTablesLargerThan, maintenanceWorkMem
        case dropTargetFirst, terminateTargetSessions, lockTimeout, allowRestoreErrors, dumpScope, dumpPath
        case skipAnalyze, noOwner, noACL, copyRoles, pgBinDirectory, resume, stateDirectory, listen, listenTokenFile
        case schemas = "filter.schemas", excludeSchemas = "filter.excludeSchemas"
        case tables = "filter.tables", excludeTables = "filter.excludeTables"
        case slotName = "online.slotName", publication = "online.publication"
        case subscriptionName = "online.subscriptionName", subscriptionSource = "online.subscriptionSource", apply = "online.apply"
        case relaySessions = "online.relaySessions"
        case lagThresholdBytes = "online.lagThresholdBytes", lagThresholdSeconds = "online.lagThresholdSeconds"
        case everyLagReading = "online.everyLagReading", pollInterval = "online.pollInterval"
        case fastPollInterval = "online.fastPollInterval", cutoverTimeout = "online.cutoverTimeout"
        case keepSubscription = "online.keepSubscription", keepSlot = "online.keepSlot"
        case syncSequences = "online.syncSequences", autoCreatePublication = "online.autoCreatePublication"
        case forceClean = "online.forceClean", dropForeignSlot = "online.dropForeignSlot"
        case maxRetainedWALBytes = "online.maxRetainedWALBytes", dryRun = "online.dryRun"
        case freezeSourceAtCutover = "online.freezeSourceAtCutover", setReplicaIdentityFull = "online.setReplicaIdentityFull"
        case verifyMode = "verify.mode", verifyShowRows = "verify.showRows", verifySplitBytes = "verify.splitBytes"

        /// How a message names it: the property path between backticks.
        public var mention: String { "`\(rawValue)`" }
        public var description: String { mention }

        /// Replaces each setting's ``mention`` in `text` by `render(setting)`.
        public static func render(_ text: String, _ render: (Setting) -> String) -> String {
            guard text.contains("`") else { return text }
            var result = text
            for setting in allCases where result.contains(setting.mention) {
                result = result.replacingOccurrences(of: setting.mention, with: render(setting))
            }
            return result
        }
    }
}

/// Inside the library, messages name settings as `\(Setting.resume)`.
typealias Setting = MigrationConfig.Setting
