import PostgresClient

/// A point in time on one server, for others to read in: a transaction that exports its
/// snapshot (`pg_export_snapshot()`) and stays open, idle, until every reader has imported it.
/// The offline native copy's on the source (read by `pg_dump --snapshot` and each copy worker);
/// a frozen cutover's on the target, as of the barrier (read by the verify after the switch).
struct ExportedSnapshot: Sendable {
    let name: String
    private let holder: Connection

    static func export(from server: Endpoint, stage: Stage = .dump) async throws -> ExportedSnapshot {
        let holder = try await server.connect(label: "snapshot", stage: stage)
        do {
            try await holder.keepAliveWhileIdle()
            try await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            guard let name = try await holder.scalar("SELECT pg_export_snapshot()") else {
                throw MigrationError(stage, "pg_export_snapshot() returned nothing")
            }
            return ExportedSnapshot(name: name, holder: holder)
        } catch {
            await holder.close()
            throw error
        }
    }

    private init(name: String, holder: Connection) {
        self.name = name
        self.holder = holder
    }

    func release() async {
        _ = try? await holder.execute("COMMIT")
        await holder.close()
    }
}
