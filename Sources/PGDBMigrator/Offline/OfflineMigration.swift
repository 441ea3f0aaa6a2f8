import Foundation

/// Validate → Dump → Restore → Analyze → Complete.
struct OfflineMigration {
    var config: MigrationConfig
    var events: EventEmitter

    func run() async throws -> MigrationOutcome {
        let started = ContinuousClock.now
        do {
            events.info(.validate, "checking source and target")
            let store = try RunStateStore.open(for: config)
            var config = config
            let recorded = store.current.copy
            if config.resume && recorded.targetTouched && !recorded.targetPrepared {
                // The interrupted run died while creating the schema: what it made is redone from scratch.
                events.info(.validate, "resuming: the interrupted run had not finished the schema; the target database is made again")
                config.dropTargetFirst = true
            }
            let resumingCopy = config.resume && recorded.targetPrepared
            let report = try await Preflight(config: config, events: events, targetHoldsResumedCopy: resumingCopy).run()
            try store.checkTables(report.tables, of: config)
            let copy = DatabaseCopy(config: config, report: report, events: events, store: store)
            let warnings = try await copy.run()
            try await copy.analyze()
            let verified = try await VerifyRun(config: config, events: events).afterMigration()
            store.finish()
            let duration = ContinuousClock.now - started
            events.info(
                .complete, "migration complete in \(formatSeconds(duration.seconds))",
                ["seconds": .double(duration.seconds), "warnings": .int(warnings.count)])
            return MigrationOutcome(
                mode: .offline, cutoverTriggered: false, warnings: warnings + (verified?.problems ?? []), duration: duration,
                verifyReport: verified)
        } catch {
            throw events.cancellation(ifCancelled: error)
        }
    }
}
