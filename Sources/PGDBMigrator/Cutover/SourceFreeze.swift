import PostgresClient

/// Makes the source database refuse new writes for the cutover, and undoes it.
///
/// `default_transaction_read_only` applies to new sessions, so the other
/// sessions on the database are ended: applications reconnect read-only.
/// A session that explicitly sets `transaction_read_only = off` could still
/// write; the freeze is a guard-rail for applications, not a security boundary.
///
/// Only a freeze this run made is ever undone: a database that was already
/// read-only (a DBA's own setting) is left as it was.
struct SourceFreeze {
    var database: String

    /// What an operator runs to undo the freeze. A new session on the frozen
    /// database starts read-only, so it must lift that for itself first.
    var undoSQL: String {
        "SET default_transaction_read_only = off; ALTER DATABASE \(SQL.identifier(database)) RESET default_transaction_read_only"
    }

    /// Whether the database's own settings make it read-only (ours, or someone else's).
    func isInPlace(on source: Connection) async throws -> Bool {
        // Stored as typed (on, true, yes, 1, …): read it the way the server does.
        try await source.scalar(
            """
            SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, unnest(s.setconfig) AS c
            WHERE d.datname = $1 AND s.setrole = 0 AND split_part(c, '=', 1) = 'default_transaction_read_only'
              AND substr(c, length('default_transaction_read_only=') + 1)::bool
            """, [database]) != nil
    }

    /// Makes the database read-only (unless it already was) and ends its other
    /// sessions. `record` runs before the setting changes, so that a run killed
    /// right after still knows the freeze is its own to undo; it is not called
    /// when the database was read-only already. Returns how many sessions were ended.
    func freeze(on source: Connection, record: () throws -> Void) async throws -> (sessionsEnded: Int, alreadyReadOnly: Bool) {
        let alreadyReadOnly = try await isInPlace(on: source)
        if !alreadyReadOnly {
            try record()
            try await source.execute("ALTER DATABASE \(SQL.identifier(database)) SET default_transaction_read_only = on")
        }
        let frozenAt = try await source.scalar("SELECT clock_timestamp()::text")
        let ended = try await source.scalar(
            """
            SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
            WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'
            """, [database])
        // Wait until they are really gone, so no transaction of theirs can commit after the barrier.
        for _ in 0..<200 {
            let left = try await source.scalar(
                """
                SELECT count(*) FROM pg_stat_activity
                WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'
                  AND backend_start < $2::timestamptz
                """, [database, frozenAt])
            if left == "0" { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        return (Int(ended ?? "0") ?? 0, alreadyReadOnly)
    }

    func unfreeze(on source: Connection) async throws {
        // Two round trips: one simple query would be one transaction, read-only from its start.
        try await source.execute("SET default_transaction_read_only = off")
        try await source.execute("ALTER DATABASE \(SQL.identifier(database)) RESET default_transaction_read_only")
    }
}
