/// Validate → Dump → Restore → Analyze → Complete.
struct OfflineMigration {
    var config: MigrationConfig
    var events: EventEmitter

    func run() async throws -> MigrationOutcome {
        let started = ContinuousClock.now
        do {
            events.info(.validate, "checking source and target")
            let report = try await Preflight(config: config, events: events).run()
            let copy = DatabaseCopy(config: config, report: report, events: events)
            let warnings = try await copy.run()
            try await copy.analyze()
            let verified = try await VerifyRun(config: config, events: events).afterMigration()
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
