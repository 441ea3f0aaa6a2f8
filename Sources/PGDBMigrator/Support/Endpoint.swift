import Foundation
import PostgresClient

/// One side of the migration — the source or the target server — and how to talk about it.
struct Endpoint: Sendable {
    enum Role: String, Sendable {
        case source, target
    }

    var role: Role
    var connectionString: ConnectionString

    /// Opens a connection, turning libpq's failure into a message that names the side and the fix.
    ///
    /// A source database read-only by its settings (a DBA's, or the cutover's freeze) starts every
    /// session read-only; the tool's source sessions write only its own objects (the publication,
    /// the freeze and its undoing, the teardown), so they lift that for themselves. (A standby
    /// stays read-only whatever a session sets.)
    func connect(
        label: String? = nil, database: String? = nil, applicationName: String? = nil, stage: Stage = .validate
    ) async throws -> Connection {
        var options = database.map { connectionString.setting("dbname", to: $0) } ?? connectionString
        if let applicationName { options = options.setting("application_name", to: applicationName) }
        do {
            let connection = try await Connection.connect(options, label: label ?? role.rawValue)
            guard role == .source else { return connection }
            do {
                try await connection.execute("SET default_transaction_read_only = off")
            } catch {
                await connection.close()
                throw error
            }
            return connection
        } catch let error as PostgresError {
            throw MigrationError(
                stage, "cannot connect to the \(role) (\(options.redacted)): \(error.message)",
                fix: "check the \(setting) connection string: host, port, user, password (or PGPASSFILE) and database", code: .connection,
                underlying: error)
        }
    }

    /// Runs `body` on a connection of its own, closed (and awaited) whether `body` returns or throws.
    func withConnection<T: Sendable>(
        label: String? = nil, stage: Stage = .validate, _ body: (Connection) async throws -> T
    ) async throws -> T {
        let connection = try await connect(label: label, stage: stage)
        do {
            let result = try await body(connection)
            await connection.close()
            return result
        } catch {
            await connection.close()
            throw error
        }
    }

    /// How a child process (`pg_dump`, `pg_restore`, `vacuumdb`) reaches this server with no secret
    /// in its argv, which every local user can read: the password travels in its environment
    /// (`PGPASSWORD`); the other secrets, which have no environment variable (`sslpassword`), in
    /// a 0600 service file of their own. Call ``ChildConnection/remove()`` once the child is done.
    /// `applicationName` names its sessions, so that ``LockWait`` can find them.
    func childConnection(applicationName: String? = nil) throws -> ChildConnection {
        let options = applicationName.map { connectionString.setting("application_name", to: $0) } ?? connectionString
        var environment: [String: String] = [:]
        if let password = options.password { environment["PGPASSWORD"] = password }
        let others = options.secrets.filter { $0.keyword != "password" }
        guard !others.isEmpty else {
            return ChildConnection(arguments: ["--dbname=\(options.secretFreeKeywordValue)"], environment: environment, directory: nil)
        }
        let names = others.map(\.keyword).joined(separator: ", ")
        if options["service"] != nil || ProcessInfo.processInfo.environment["PGSERVICE"] != nil {
            throw MigrationError(
                .validate,
                "the \(setting) connection string gives \(names) and also names a service (service= or PGSERVICE): "
                    + "the tool passes \(names) to pg_dump and pg_restore through a service file of its own, which cannot include yours",
                fix: "put \(names) in your service file (pg_service.conf) instead of the connection string")
        }
        if others.contains(where: { $0.value.contains(where: \.isNewline) }) {
            throw MigrationError(.validate, "\(names) in the \(setting) connection string contains a line break", fix: "remove it")
        }
        let directory = try PrivateDirectory.make(prefix: "pgdm-service")
        let file = directory + "/pg_service.conf"
        let text = "[pg_dbmigrator]\n" + others.map { "\($0.keyword)=\($0.value)\n" }.joined()
        guard FileManager.default.createFile(atPath: file, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]) else {
            try? FileManager.default.removeItem(atPath: directory)
            throw MigrationError(.validate, "cannot write a service file in \(directory)", fix: "check TMPDIR: it must be writable")
        }
        environment["PGSERVICEFILE"] = file
        return ChildConnection(
            arguments: ["--dbname=\(options.setting("service", to: "pg_dbmigrator").secretFreeKeywordValue)"],
            environment: environment, directory: directory)
    }

    var databaseName: String { connectionString.resolvedDatabase ?? "postgres" }

    /// The setting that names this server.
    var setting: Setting { role == .source ? .source : .target }
}

/// What a child process gets to connect: `--dbname=…` without secrets, and an
/// environment that carries them (see ``Endpoint/childConnection(applicationName:)``).
struct ChildConnection: Sendable {
    var arguments: [String]
    var environment: [String: String]
    /// The 0700 directory holding the service file, when there is one.
    var directory: String?

    /// Deletes the service file. Safe to call twice.
    func remove() {
        if let directory { try? FileManager.default.removeItem(atPath: directory) }
    }
}

extension MigrationConfig {
    /// `--source` as an endpoint: how every phase connects to it and talks about it.
    var sourceEndpoint: Endpoint { Endpoint(role: .source, connectionString: source) }
    /// `--target` as an endpoint.
    var targetEndpoint: Endpoint { Endpoint(role: .target, connectionString: target) }
}
