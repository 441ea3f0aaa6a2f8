import PostgresClient

/// One side of the migration — the source or the target server — and how to talk about it.
struct Endpoint: Sendable {
    enum Role: String, Sendable {
        case source, target
    }

    var role: Role
    var connectionString: ConnectionString

    /// Opens a connection, turning libpq's failure into a message that names the side and the fix.
    func connect(
        label: String? = nil, database: String? = nil, applicationName: String? = nil, stage: Stage = .validate
    ) async throws -> Connection {
        var options = database.map { connectionString.setting("dbname", to: $0) } ?? connectionString
        if let applicationName { options = options.setting("application_name", to: applicationName) }
        do {
            return try await Connection.connect(options, label: label ?? role.rawValue)
        } catch let error as PostgresError {
            throw MigrationError(
                stage, "cannot connect to the \(role) (\(options.redacted)): \(error.message)",
                fix: "check the --\(role) connection string: host, port, user, password (or PGPASSFILE) and database")
        }
    }

    /// The environment a child process needs to reach this server: the password, if the
    /// connection string has one, travels here — never in argv.
    var childEnvironment: [String: String] {
        guard let password = connectionString.password else { return [:] }
        return ["PGPASSWORD": password]
    }

    /// `--dbname=…` for `pg_dump`/`pg_restore`/`vacuumdb`: every option the user gave except the password.
    var childDatabaseArgument: String { "--dbname=\(connectionString.passwordlessKeywordValue)" }

    var databaseName: String { connectionString.resolvedDatabase ?? "postgres" }
}
