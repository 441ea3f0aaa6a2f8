import PostgresClient

/// Makes the source refuse writes to the migrated tables for the cutover, and undoes it.
///
/// Three layers, because each alone can be walked around:
/// * `default_transaction_read_only` on the database makes new sessions
///   read-only — but any session may set it off for itself;
/// * the database's other sessions are ended, so no transaction that began
///   before the freeze can commit after the barrier;
/// * a trigger on every migrated table (row-level for INSERT, UPDATE and
///   DELETE, so writes routed through a partitioned parent are caught too;
///   statement-level for TRUNCATE), enabled ALWAYS so that
///   `session_replication_role = replica` does not silence it, rejects the
///   write whatever the session's settings. A superuser can still drop the
///   triggers: the freeze stops applications and ordinary roles, not an
///   administrator.
///
/// The triggers live with their function in a schema of their own, marked
/// with the run's id; only this run's schema is ever dropped. The read-only
/// setting is undone only when this run set it (a DBA's own stays).
struct SourceFreeze {
    var database: String
    var runID: String?

    static let schema = "pgdbmigrator_freeze"
    static let trigger = "pgdbmigrator_freeze"

    /// What an operator runs to undo the freeze. A new session on the frozen
    /// database starts read-only, so it must lift that for itself first.
    func undoSQL(resettingReadOnly: Bool = true) -> String {
        "SET default_transaction_read_only = off; "
            + (resettingReadOnly ? "ALTER DATABASE \(SQL.identifier(database)) RESET default_transaction_read_only; " : "")
            + "DROP SCHEMA \(SQL.identifier(Self.schema)) CASCADE"
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

    /// Freezes the database for writes to `tables`. `record` runs before the
    /// read-only setting changes, so that a run killed right after still knows
    /// the freeze is its own to undo; it is not called when the database was
    /// read-only already. Prepared transactions, which could commit writes
    /// after the barrier, stop the freeze, named. Returns how many sessions were ended.
    func freeze(
        on source: Connection, tables: [QualifiedName], lockWait: LockWait, record: () throws -> Void
    ) async throws -> (sessionsEnded: Int, sessionsLeft: [String], alreadyReadOnly: Bool) {
        let alreadyReadOnly = try await isInPlace(on: source)
        if !alreadyReadOnly {
            try record()
            try await source.execute("ALTER DATABASE \(SQL.identifier(database)) SET default_transaction_read_only = on")
        }
        let (ended, left) = try await endOtherSessions(on: source)
        let prepared = try await source.query(
            "SELECT gid, owner, prepared::text FROM pg_prepared_xacts WHERE database = current_database() ORDER BY prepared"
        ).rows.map { "\(SQL.literal($0[0] ?? "?")) (owner \($0[1] ?? "?"), prepared \($0[2] ?? "?"))" }
        guard prepared.isEmpty else {
            throw MigrationError(
                .cutover,
                "prepared transactions on the source could commit writes after the barrier: " + prepared.joined(separator: ", "),
                fix: "COMMIT PREPARED or ROLLBACK PREPARED them (their owner decides), then resume and cut over again")
        }
        try await lockWait.watching("installing the freeze triggers on the source's tables", session: source) {
            try await installTriggers(on: source, tables: tables)
        }
        return (ended, left, alreadyReadOnly)
    }

    /// Ends the database's other client sessions that this role may signal (a
    /// non-superuser may not end a superuser's, nor, without pg_signal_backend,
    /// another role's) and waits up to 10 s until they are gone, so no
    /// transaction of theirs can commit after the barrier. Returns how many were
    /// ended and those still there: their transactions' writes to migrated tables
    /// hold up the triggers' installation until they end, and the triggers reject
    /// their later ones.
    private func endOtherSessions(on source: Connection) async throws -> (ended: Int, left: [String]) {
        let frozenAt = try await source.scalar("SELECT clock_timestamp()::text")
        let ended = try await source.scalar(
            """
            SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity a
            WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'
              AND ((SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                   OR (NOT (SELECT rolsuper FROM pg_roles WHERE oid = a.usesysid)
                       AND (pg_has_role(current_user, a.usesysid, 'USAGE') OR pg_has_role(current_user, 'pg_signal_backend', 'USAGE'))))
            """, [database])
        var left: [String] = []
        for _ in 0..<200 {
            left = try await source.query(
                """
                SELECT format('pid %s (user %s, application %s)', pid, usename, quote_literal(application_name))
                FROM pg_stat_activity
                WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'
                  AND backend_start < $2::timestamptz
                ORDER BY pid
                """, [database, frozenAt]
            ).rows.compactMap { $0[0] }
            if left.isEmpty { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        return (Int(ended ?? "0") ?? 0, left)
    }

    /// The schema, its function and a trigger pair per table, in one transaction: all or nothing.
    private func installTriggers(on source: Connection, tables: [QualifiedName]) async throws {
        guard let runID, !tables.isEmpty else { return }
        let schema = SQL.identifier(Self.schema)
        let trigger = SQL.identifier(Self.trigger)
        let truncateTrigger = SQL.identifier(Self.trigger + "_truncate")
        var statements = [
            "CREATE SCHEMA \(schema)",
            "COMMENT ON SCHEMA \(schema) IS \(SQL.literal(OwnershipMark.text(runID: runID)))",
            """
            CREATE FUNCTION \(schema).reject() RETURNS trigger LANGUAGE plpgsql AS $freeze$
            BEGIN
                RAISE EXCEPTION 'database frozen for a migration cutover (pg_dbmigrator): % on %.% refused', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
                    USING ERRCODE = '25006';
            END
            $freeze$
            """,
        ]
        for table in tables {
            statements += [
                "CREATE TRIGGER \(trigger) BEFORE INSERT OR UPDATE OR DELETE ON \(table) FOR EACH ROW EXECUTE FUNCTION \(schema).reject()",
                "CREATE TRIGGER \(truncateTrigger) BEFORE TRUNCATE ON \(table) FOR EACH STATEMENT EXECUTE FUNCTION \(schema).reject()",
                "ALTER TABLE \(table) ENABLE ALWAYS TRIGGER \(trigger)",
                "ALTER TABLE \(table) ENABLE ALWAYS TRIGGER \(truncateTrigger)",
            ]
        }
        do {
            try await source.execute("BEGIN; " + statements.joined(separator: ";\n") + "; COMMIT")
        } catch {
            _ = try? await source.execute("ROLLBACK")
            throw error
        }
    }

    /// Undoes what this run froze: its triggers (by the schema's mark) always, the
    /// read-only setting only when `resetSetting` (the run state says this run set it).
    /// Returns whether there was anything to undo.
    @discardableResult
    func unfreeze(on source: Connection, resetSetting: Bool) async throws -> Bool {
        // Two round trips: one simple query would be one transaction, read-only from its start.
        try await source.execute("SET default_transaction_read_only = off")
        if resetSetting {
            try await source.execute("ALTER DATABASE \(SQL.identifier(database)) RESET default_transaction_read_only")
        }
        return try await removeTriggers(on: source) || resetSetting
    }

    /// Whether the freeze schema is there and this run made it (its mark says so).
    func hasOwnTriggers(on source: Connection) async throws -> Bool {
        let comment = try await source.query(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = $1", [Self.schema]
        ).rows.first
        return comment.map { OwnershipMark.owner(ofObjectCommented: $0[0], runID: runID) == .thisRun } ?? false
    }

    /// Drops the freeze schema (and with it the triggers that use its function) if this run made it.
    @discardableResult
    func removeTriggers(on source: Connection) async throws -> Bool {
        guard try await hasOwnTriggers(on: source) else { return false }
        try await source.execute("DROP SCHEMA \(SQL.identifier(Self.schema)) CASCADE")
        return true
    }
}
