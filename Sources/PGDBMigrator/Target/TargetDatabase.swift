import PostgresClient

/// Creating, or dropping and re-creating, the target database before the restore.
struct TargetDatabase {
    var target: Endpoint
    var events: EventEmitter

    /// Databases every server needs: never dropped, whatever the flags.
    static let protectedNames: Set<String> = ["postgres", "template0", "template1"]

    /// Says what `--drop-target-first` is about to destroy — the database's size,
    /// its tables and the sessions connected to it — before anything is dropped,
    /// and refuses while other sessions are connected unless told to end them.
    /// `target` is a session on that database (left out of the list).
    func checkDrop(on session: Connection, terminatingSessions: Bool) async throws {
        let name = self.target.databaseName
        guard !Self.protectedNames.contains(name) else {
            throw MigrationError(
                .validate, "\(SQL.identifier(name)) is never dropped: every server needs it",
                fix: "point \(Setting.target) at the database to migrate into", code: .invalidArgument)
        }
        let size = try await session.query(
            """
            SELECT pg_size_pretty(pg_database_size(current_database())),
                   (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relkind IN ('r', 'p') AND \(UserSchemas.predicate("n.nspname")))
            """
        ).rows[0]
        let sessions = try await session.query(
            """
            SELECT pid::text, coalesce(usename, '?'), coalesce(nullif(application_name, ''), '(no application name)'),
                   coalesce(host(client_addr), 'local socket')
            FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type IN ('client backend', 'walsender')
            ORDER BY backend_start
            """
        ).rows.map { "pid \($0[0]!) \($0[1]!) (\($0[2]!)) from \($0[3]!)" }
        // DROP DATABASE drops the database's logical slots with it: a CDC pipeline's position would be lost.
        let slots = try await session.query(
            "SELECT slot_name || ' (' || plugin || ')' FROM pg_replication_slots WHERE database = current_database() ORDER BY 1"
        ).rows.compactMap { $0[0] }
        guard slots.isEmpty else {
            throw MigrationError(
                .validate,
                "\(Setting.dropTargetFirst) would drop the target database \(SQL.identifier(name)) and with it its replication slot(s) "
                    + slots.joined(separator: ", ") + "; nothing was dropped",
                fix: "drop those slots yourself if no one needs them (pg_drop_replication_slot), or point \(Setting.target) elsewhere")
        }
        let what = "\(size[0] ?? "?"), \(size[1] ?? "?") table(s)"
        let connected =
            sessions.isEmpty ? "no other session connected" : "\(sessions.count) session(s) connected: " + sessions.joined(separator: "; ")
        guard sessions.isEmpty || terminatingSessions else {
            throw MigrationError(
                .validate,
                "\(Setting.dropTargetFirst) would drop the target database \(SQL.identifier(name)) (\(what)) while \(connected); nothing was dropped",
                fix: "stop those sessions, or add \(Setting.terminateTargetSessions) to end them when the database is dropped", code: .busy)
        }
        events.warning(
            .validate,
            "\(Setting.dropTargetFirst): the target database \(SQL.identifier(name)) (\(what)) will be dropped and re-created; "
                + connected + (sessions.isEmpty ? "" : ", ended when it is dropped (\(Setting.terminateTargetSessions))"),
            [
                "database": .string(name), "size": .string(size[0] ?? "?"), "tables": .int(Int(size[1] ?? "0") ?? 0),
                "sessions": .list(sessions),
            ])
    }

    /// The database to connect to while `name` itself is being created or dropped.
    static func maintenanceDatabase(for name: String) -> String {
        name == "postgres" ? "template1" : "postgres"
    }

    /// Makes sure an empty target database exists: drops it first when asked, creates it when missing.
    /// `terminatingSessions`: end sessions still connected (they were listed by ``checkDrop(on:terminatingSessions:)``).
    func prepare(exists: Bool, dropFirst: Bool, terminatingSessions: Bool, like settings: DatabaseSettings) async throws {
        guard !exists || dropFirst else { return }
        let name = target.databaseName
        precondition(!(exists && Self.protectedNames.contains(name)), "checkDrop refuses to drop \(name)")
        let maintenance = try await target.connect(database: Self.maintenanceDatabase(for: name), stage: .restore)
        if exists {
            // FORCE (PostgreSQL 13+) ends other sessions instead of failing on them; without it, a session
            // that connected since Validate makes the drop fail (after a 5 s grace), and nothing is dropped.
            let forceSupported = await maintenance.serverVersion >= 130_000
            let force = terminatingSessions && forceSupported ? " WITH (FORCE)" : ""
            try await run(maintenance, "DROP DATABASE IF EXISTS \(SQL.identifier(name))\(force)", "drop")
            events.info(.restore, "dropped the target database \(SQL.identifier(name))", ["database": .string(name)])
        }
        let create = """
            CREATE DATABASE \(SQL.identifier(name)) TEMPLATE template0 ENCODING \(SQL.literal(settings.encoding))
            """
        do {
            try await maintenance.execute(
                create + " LC_COLLATE \(SQL.literal(settings.collate)) LC_CTYPE \(SQL.literal(settings.ctype))")
        } catch let error as PostgresError where error.sqlState == "22023" || error.sqlState == "42809" {
            // The source's locale does not exist on the target machine: keep the encoding, use the target's default locale.
            events.warning(
                .restore, "locale \(settings.collate) is not available on the target; using the target's default locale",
                ["locale": .string(settings.collate)])
            try await run(maintenance, create, "create")
        } catch let error as PostgresError {
            throw failure(error, "create")
        }
        await maintenance.close()
        events.info(.restore, "created the target database \(SQL.identifier(name))", ["database": .string(name)])
    }

    private func run(_ connection: Connection, _ sql: String, _ verb: String) async throws {
        do {
            try await connection.execute(sql)
        } catch let error as PostgresError {
            throw failure(error, verb)
        }
    }

    private func failure(_ error: PostgresError, _ verb: String) -> MigrationError {
        MigrationError(
            .restore, "cannot \(verb) the target database \(SQL.identifier(target.databaseName)): \(error)",
            fix: error.sqlState == PostgresError.insufficientPrivilege
                ? "the target role needs to own the database (or have CREATEDB); ask an administrator" : nil, underlying: error)
    }
}
