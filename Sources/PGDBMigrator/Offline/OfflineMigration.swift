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
            let dumpSeconds = (ContinuousClock.now - dumpStarted).seconds
            let bytes = directory.size
            events.info(
                .dump, "dump finished: \(formatBytes(bytes)) in \(formatSeconds(dumpSeconds))",
                ["bytes": .int(bytes), "seconds": .double(dumpSeconds)])

            stage = .restore
            try await TargetDatabase(target: copy.target, events: events).prepare(
                exists: report.targetDatabaseExists, dropFirst: config.dropTargetFirst, like: report.sourceDatabase)
            if !config.filter.tables.isEmpty && config.dumpScope != .dataOnly {
                try await createSchemasOfSelectedTables()
            }
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
                .complete, "migration complete in \(formatSeconds(duration.seconds))",
                ["seconds": .double(duration.seconds), "warnings": .int(warnings.count)])
            return MigrationOutcome(mode: .offline, cutoverTriggered: false, warnings: warnings, duration: duration)
        } catch is CancellationError {
            throw MigrationCancelled(stage: stage)
        } catch {
            if Task.isCancelled { throw MigrationCancelled(stage: stage) }
            throw error
        }
    }

    private func createSchemasOfSelectedTables() async throws {
        let tableSchemas = TableSchemas(filter: config.filter)
        let source = try await Endpoint(role: .source, connectionString: config.source).connect(stage: .restore)
        let schemas = try await tableSchemas.schemas(on: source)
        await source.close()
        let target = try await Endpoint(role: .target, connectionString: config.target).connect(stage: .restore)
        try await tableSchemas.create(schemas, on: target)
        await target.close()
    }
}
