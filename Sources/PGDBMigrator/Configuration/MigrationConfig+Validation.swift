import Foundation
import PostgresClient

extension MigrationConfig {
    /// Every argument checked before anything is touched: numbers in range, names
    /// valid for what they name, flags that make sense together. The CLI turns a
    /// failure into exit status 64; the library throws it from ``Migrator/run()``.
    public func validate() throws(MigrationError) {
        func refuse(_ message: String, fix: String? = nil) -> MigrationError {
            MigrationError(.validate, message, fix: fix, code: .invalidArgument)
        }
        guard (1...64).contains(jobs), (1...64).contains(indexJobs) else {
            throw refuse("\(Setting.jobs) and \(Setting.indexJobs) must be between 1 and 64")
        }
        guard splitTablesLargerThan >= 0, splitTablesLargerThan <= Self.maximumSplitBytes else {
            throw refuse("\(Setting.splitTablesLargerThan) must be between 0 and 1PB")
        }
        guard maintenanceWorkMem >= 1024 * 1024, maintenanceWorkMem <= Self.maximumMaintenanceWorkMem else {
            throw refuse("\(Setting.maintenanceWorkMem) must be between 1MB and 2047GB (PostgreSQL's limit)")
        }
        if dumpScope == .dataOnly && dropTargetFirst {
            throw refuse(
                "\(Setting.dumpScope) data-only loads rows into the target's existing tables; it cannot be combined with \(Setting.dropTargetFirst)",
                fix: "drop \(Setting.dropTargetFirst), or copy everything with \(Setting.dumpScope) all")
        }
        if resume && dropTargetFirst {
            throw refuse("\(Setting.resume) continues what is in the target; it cannot be combined with \(Setting.dropTargetFirst)")
        }
        if resume && online.forceClean {
            throw refuse(
                "\(Setting.forceClean) starts afresh; it cannot be combined with \(Setting.resume), which continues the interrupted run")
        }
        if resume && dumpScope == .dataOnly {
            throw refuse(
                "a \(Setting.dumpScope) data-only copy cannot be resumed: it loads whole tables into tables it did not create",
                fix: "empty the target's tables (TRUNCATE) and run again without \(Setting.resume)")
        }
        if listen != nil || listenTokenFile != nil { _ = try ListenAddress(config: self) }
        if let slot = online.dropForeignSlot {
            guard mode == .cleanup else { throw refuse("\(Setting.dropForeignSlot) is a \(Setting.mode) cleanup option") }
            try OnlineSettings.checkSlotName(slot, flag: "\(Setting.dropForeignSlot)")
        }
        if terminateTargetSessions && !dropTargetFirst && !resume {
            throw refuse(
                "\(Setting.terminateTargetSessions) goes with \(Setting.dropTargetFirst) (or \(Setting.resume), which may re-create the target)"
            )
        }
        if dropTargetFirst, let database = target.resolvedDatabase, TargetDatabase.protectedNames.contains(database) {
            throw refuse(
                "\(Setting.dropTargetFirst) would drop \(SQL.identifier(database)), which every server needs; it is never dropped",
                fix: "point \(Setting.target) at the database to migrate into")
        }
        // PostgreSQL would cut a longer name to 63 bytes and connect to that database, while the
        // same-database check and the target lock would key on the whole name.
        for (setting, connection) in [(Setting.source, source), (Setting.target, target)] {
            if let database = connection.resolvedDatabase {
                try OnlineSettings.checkIdentifier(database, flag: "the \(setting) database name")
            }
        }
        guard lockTimeout > .zero, lockTimeout <= OnlineSettings.longestInterval else {
            throw refuse("\(Setting.lockTimeout) must be more than 0 and at most 30 days")
        }
        try online.validate()
        try verify.validate()
    }

    /// Larger than any table; a bound that keeps the byte arithmetic far from overflowing.
    static let maximumSplitBytes = 1 << 50
    /// `maintenance_work_mem` is at most `INT_MAX` kilobytes.
    static let maximumMaintenanceWorkMem = Int(Int32.max) * 1024
}

extension OnlineSettings {
    func validate() throws(MigrationError) {
        try Self.checkSlotName(slotName, flag: "\(Setting.slotName)")
        try Self.checkIdentifier(publication, flag: "\(Setting.publication)")
        try Self.checkIdentifier(subscriptionName, flag: "\(Setting.subscriptionName)")
        for (flag, interval) in [
            ("\(Setting.pollInterval)", pollInterval), ("\(Setting.fastPollInterval)", fastPollInterval),
            ("\(Setting.cutoverTimeout)", cutoverTimeout), ("apply failure grace", applyFailureGrace),
        ]
        where interval <= .zero || interval > Self.longestInterval {
            throw MigrationError(.validate, "\(flag) must be more than 0 and at most 30 days", code: .invalidArgument)
        }
        guard lagThresholdSeconds.isFinite, lagThresholdSeconds > 0, lagThresholdSeconds <= 86_400 else {
            throw MigrationError(
                .validate, "\(Setting.lagThresholdSeconds) must be more than 0 and at most one day", code: .invalidArgument)
        }
        guard (1...Self.maximumRelaySessions).contains(relaySessions) else {
            throw MigrationError(
                .validate, "\(Setting.relaySessions) must be between 1 and \(Self.maximumRelaySessions)", code: .invalidArgument)
        }
        if let limit = maxRetainedWALBytes, limit == 0 || limit > Self.largestWALLimit {
            throw MigrationError(
                .validate, "\(Setting.maxRetainedWALBytes) must be between 1 and 1000000000 (MiB, about 1 PB)", code: .invalidArgument)
        }
    }

    static let longestInterval = Duration.seconds(30 * 24 * 3600)
    static let largestWALLimit: UInt64 = 1_000_000_000 * 1024 * 1024

    /// PostgreSQL's own rule for slot names (`ReplicationSlotValidateName`):
    /// lower-case letters, digits and underscores, at most 63 bytes.
    static func checkSlotName(_ name: String, flag: String) throws(MigrationError) {
        try checkIdentifier(name, flag: flag)
        guard name.utf8.allSatisfy({ (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) || $0 == 0x5f }) else {
            throw MigrationError(
                .validate, "\(flag) \(SQL.literal(name)) is not a valid replication slot name",
                fix: "use only lower-case letters, digits and underscores, e.g. \(SQL.literal(suggestedSlotName(name)))",
                code: .invalidArgument)
        }
    }

    /// A name PostgreSQL stores as given: not empty, no NUL, at most 63 bytes (longer ones are silently truncated).
    static func checkIdentifier(_ name: String, flag: String) throws(MigrationError) {
        guard !name.isEmpty, !name.utf8.contains(0) else {
            throw MigrationError(.validate, "\(flag) must not be empty", code: .invalidArgument)
        }
        guard name.utf8.count <= 63 else {
            throw MigrationError(
                .validate, "\(flag) is \(name.utf8.count) bytes long; PostgreSQL names hold at most 63 bytes and would cut it short",
                fix: "choose a shorter name", code: .invalidArgument)
        }
    }

    private static func suggestedSlotName(_ name: String) -> String {
        String(name.lowercased().map { $0.isLetter && $0.isASCII || $0.isNumber && $0.isASCII ? $0 : "_" }.prefix(63))
    }
}

extension VerifySettings {
    func validate() throws(MigrationError) {
        guard showRows >= 0, showRows <= 1_000_000 else {
            throw MigrationError(.validate, "\(Setting.verifyShowRows) must be between 0 and 1000000", code: .invalidArgument)
        }
        guard splitBytes > 0, splitBytes <= MigrationConfig.maximumSplitBytes else {
            throw MigrationError(.validate, "\(Setting.verifySplitBytes) must be between 1 and 1000000000", code: .invalidArgument)
        }
    }
}

extension MigrationConfig {
    /// The configuration as a run of this mode uses it. Online (and the cleanup of an online
    /// run) everything happens on the primary: a source string naming several hosts without
    /// `target_session_attrs` lets libpq take the first that answers, as likely a standby as the
    /// primary, so `read-write` is added; the subscription's connection inherits it.
    var effective: MigrationConfig {
        guard mode == .online || mode == .cleanup else { return self }
        let hosts = [source["host"], source["hostaddr"]].compactMap { $0 }
        let environment = ProcessInfo.processInfo.environment
        guard hosts.contains(where: { $0.contains(",") }), source["target_session_attrs"] == nil,
            environment["PGTARGETSESSIONATTRS"] == nil
        else { return self }
        var copy = self
        copy.source = source.setting("target_session_attrs", to: "read-write")
        return copy
    }
}
