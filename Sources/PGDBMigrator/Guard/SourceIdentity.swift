import PostgresClient

/// Which database a session is on, across connection-string spellings: the
/// cluster's system identifier and the database's oid. Clones of one cluster
/// share it, so it tells "the same database as recorded" for our own objects,
/// never "another database" (``SameDatabaseCheck`` does that).
enum SourceIdentity {
    static func read(on session: Connection) async throws -> String {
        let database = try await session.scalar("SELECT oid::text FROM pg_database WHERE datname = current_database()") ?? "?"
        // pg_control_system() may be closed to a role without pg_monitor: the database's oid alone then.
        let cluster = (try? await session.scalar("SELECT system_identifier::text FROM pg_control_system()")) ?? nil
        return "\(cluster ?? "unknown")/\(database)"
    }
}
