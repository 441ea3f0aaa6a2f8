/// Validate → Dump → Restore → Analyze → Complete.
struct OfflineMigration {
    var config: MigrationConfig
    var events: EventEmitter

    func run() async throws -> MigrationOutcome {
        let started = ContinuousClock.now
        var stage = Stage.validate
        do {
            events.info(.validate, "checking source and target")
            let report = try await Preflight(config: config, events: events).run()
            let copy = DumpRestore(config: config, tools: report.tools, events: events)

            stage = .dump
            let directory = try DumpDirectory.create(at: config.dumpPath)
            defer { directory.remove() }
            events.info(.dump, "dumping the source with pg_dump", ["jobs": .int(config.jobs), "path": .string(directory.root)])
            let dumpStarted = ContinuousClock.now
            try await copy.dump(into: directory)
            events.info(
                .dump, "dump finished",
                ["bytes": .int(directory.size), "seconds": .double((ContinuousClock.now - dumpStarted).seconds)])

            stage = .restore
            try await TargetDatabase(target: copy.target, events: events).prepare(
                exists: report.targetDatabaseExists, dropFirst: config.dropTargetFirst, like: report.sourceDatabase)
            events.info(.restore, "restoring into the target with pg_restore", ["jobs": .int(config.jobs)])
            let warnings = try await copy.restore(from: directory)

            stage = .analyze
            if config.skipAnalyze || config.dumpScope == .schemaOnly {
                events.info(.analyze, "skipped")
            } else {
                events.info(.analyze, "analyzing the target")
                try await Analyze(config: config, tools: report.tools).run()
            }

            let duration = ContinuousClock.now - started
            events.info(
                .complete, "migration complete",
                ["seconds": .double(duration.seconds), "warnings": .int(warnings.count)])
            return MigrationOutcome(mode: .offline, cutoverTriggered: false, warnings: warnings, duration: duration)
        } catch is CancellationError {
            throw MigrationCancelled(stage: stage)
        } catch {
            if Task.isCancelled { throw MigrationCancelled(stage: stage) }
            throw error
        }
    }
}
