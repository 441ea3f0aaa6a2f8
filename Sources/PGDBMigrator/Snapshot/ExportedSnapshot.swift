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

extension Connection {
    /// Server defaults must not end a session that sits idle in a long
    /// transaction on purpose (a snapshot holder, a copy worker between parts)
    /// or runs a COPY for hours.
    func keepAliveWhileIdle() async throws {
        var settings = ["statement_timeout", "idle_in_transaction_session_timeout", "lock_timeout"]
        if serverVersion >= 140_000 { settings.append("idle_session_timeout") }
        try await execute(settings.map { "SET \($0) = 0" }.joined(separator: "; "))
    }

    /// Joins `snapshot` in a read-only repeatable-read transaction; `SET row_security = off`
    /// makes a table the role cannot read in full fail instead of copying only the rows it sees.
    func importSnapshot(_ snapshot: String) async throws {
        try await execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT \(SQL.literal(snapshot)); "
                + "SET LOCAL row_security = off; SET LOCAL search_path = ''")
    }
}
