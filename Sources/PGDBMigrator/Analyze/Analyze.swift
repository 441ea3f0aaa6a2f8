/// Refreshes the target's planner statistics after the load, with
/// `vacuumdb --analyze-only -j N` so large databases analyze in parallel.
/// Without it the first queries on the target plan against empty statistics.
struct Analyze {
    var config: MigrationConfig
    var tools: PostgresTools

    func run() async throws {
        let connection = try config.targetEndpoint.childConnection()
        defer { connection.remove() }
        let child = ChildProcess(
            executable: tools.vacuumdb.path, arguments: ["--analyze-only", "--jobs=\(config.jobs)"] + connection.arguments,
            environment: connection.environment)
        let exit = try await child.run()
        guard exit.succeeded else {
            let lines = exit.output.suffix(5).map { config.target.scrub($0) }
            throw MigrationError(
                .analyze, "vacuumdb --analyze-only failed: \(lines.joined(separator: "; "))",
                fix: "the data is restored; run ANALYZE on the target yourself, or pass \(Setting.skipAnalyze)")
        }
    }
}
