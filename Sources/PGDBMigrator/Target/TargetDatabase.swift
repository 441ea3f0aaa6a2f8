import PostgresClient

/// Creating, or dropping and re-creating, the target database before the restore.
struct TargetDatabase {
    var target: Endpoint
    var events: EventEmitter

    /// The database to connect to while `name` itself is being created or dropped.
    static func maintenanceDatabase(for name: String) -> String {
        name == "postgres" ? "template1" : "postgres"
    }

    /// Makes sure an empty target database exists: drops it first when asked, creates it when missing.
    func prepare(exists: Bool, dropFirst: Bool, like settings: DatabaseSettings) async throws {
        guard !exists || dropFirst else { return }
        let name = target.databaseName
        let maintenance = try await target.connect(database: Self.maintenanceDatabase(for: name), stage: .restore)
        if exists {
            // FORCE (PostgreSQL 13+) ends other sessions instead of failing on them.
            let force = await maintenance.serverVersion >= 130_000 ? " WITH (FORCE)" : ""
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
                ? "the target role needs to own the database (or have CREATEDB); ask an administrator" : nil)
    }
}
