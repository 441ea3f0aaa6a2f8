import PostgresClient

/// The offline native copy's point in time: a transaction on the source that
/// exports its snapshot (`pg_export_snapshot()`) and stays open, idle, until
/// every reader — `pg_dump --snapshot` and each copy worker — has imported it.
struct ExportedSnapshot: Sendable {
    let name: String
    private let holder: Connection

    static func export(from source: Endpoint) async throws -> ExportedSnapshot {
        let holder = try await source.connect(label: "snapshot", stage: .dump)
        do {
            try await holder.keepAliveWhileIdle()
            try await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            guard let name = try await holder.scalar("SELECT pg_export_snapshot()") else {
                throw MigrationError(.dump, "pg_export_snapshot() returned nothing")
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
