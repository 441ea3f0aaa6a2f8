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
            let plan = ResumePlan.decide(resume: config.resume, mode: .offline, recorded: store.current)
            if plan == .redoTarget {
                events.info(.validate, "resuming: the interrupted run had not finished the schema; the target database is made again")
            }
            let report = try await Preflight(config: config, events: events, resumePlan: plan).run()
            try store.checkTables(report.tables, of: config)
            let streamed = config.verify.mode == .off || config.verify.method == .server ? nil : StreamVerification()
            let copy = DatabaseCopy(
                config: config, report: report, events: events, store: store, resumePlan: plan, streamed: streamed)
            let warnings = try await copy.run()
            try await copy.analyze()
            // Last, once the target is loaded and analyzed: a copied statement_timeout or read-only setting
            // must not hold up the load or ANALYZE.
            try await DatabaseProperties.carry(config: config, events: events, stage: .analyze)
            let verified = try await VerifyRun(config: config, events: events).afterMigration(streamed: streamed)
            let rolesCreated = store.current.copy.rolesCreated ?? []
            store.finish()
            let duration = ContinuousClock.now - started
            events.info(
                .complete,
                "migration complete in \(formatSeconds(duration.seconds))"
                    + (rolesCreated.isEmpty ? "" : "; roles created on the target: " + rolesCreated.joined(separator: ", ")),
                ["seconds": .double(duration.seconds), "warnings": .int(warnings.count), "roles_created": .list(rolesCreated)])
            return MigrationOutcome(
                mode: .offline, cutoverTriggered: false, warnings: warnings + (verified?.problems ?? []), duration: duration,
                verifyReport: verified)
        } catch {
            throw events.cancellation(ifCancelled: error)
        }
    }
}
