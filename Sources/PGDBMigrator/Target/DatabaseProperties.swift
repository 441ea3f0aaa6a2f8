import PostgresClient

/// What a database carries besides its objects, which `pg_dump` emits only with
/// `--create` and a restore into an existing database never gets: its settings
/// (`ALTER DATABASE … SET`, `ALTER ROLE … IN DATABASE … SET`), comment, privileges,
/// owner and connection limit.
///
/// Read from the source and applied to the target last — offline after the load,
/// online at cutover — so that a copied `statement_timeout` or
/// `default_transaction_read_only` cannot break the load or the apply.
struct DatabaseProperties: Sendable, Equatable {
    /// `name=value` as `pg_db_role_setting` stores it; `role` nil for the database's own.
    struct Setting: Sendable, Equatable {
        var role: String?
        var text: String
        var name: String { String(text.prefix { $0 != "=" }) }
    }

    /// One privilege granted on the database; `grantee` nil for PUBLIC.
    struct Grant: Sendable, Equatable {
        var grantee: String?
        var privilege: String
        var grantable: Bool
    }

    var owner: String
    var comment: String?
    var connectionLimit: Int
    var settings: [Setting]
    /// Nil: the default privileges (CONNECT and TEMPORARY for PUBLIC).
    var grants: [Grant]?

    /// The properties of the database `source` is connected to.
    static func read(from source: Connection) async throws -> DatabaseProperties {
        let row = try await source.query(
            """
            SELECT pg_get_userbyid(datdba), shobj_description(oid, 'pg_database'), datconnlimit::text, datacl IS NULL
            FROM pg_database WHERE datname = current_database()
            """
        ).rows[0]
        let settings = try await source.query(
            """
            SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, c
            FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, unnest(s.setconfig) AS c
            WHERE d.datname = current_database()
            ORDER BY s.setrole, c
            """
        ).rows.map { Setting(role: $0[0], text: $0[1]!) }
        var grants: [Grant]?
        if row[3] != "t" {
            grants = try await source.query(
                """
                SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, a.is_grantable::text
                FROM pg_database d, aclexplode(d.datacl) a
                WHERE d.datname = current_database() AND a.grantee <> d.datdba
                ORDER BY 1 NULLS FIRST, 2
                """
            ).rows.map { Grant(grantee: $0[0], privilege: $0[1]!, grantable: $0[2] == "true") }
        }
        return DatabaseProperties(
            owner: row[0]!, comment: row[1], connectionLimit: Int(row[2] ?? "-1") ?? -1, settings: settings, grants: grants)
    }

    /// The statements that give `database` these properties, each with what it carries (for messages).
    /// `skippingSettings`: names never copied (the freeze's own read-only setting).
    func statements(for database: String, noOwner: Bool, noACL: Bool, skippingSettings: Set<String> = []) -> [(what: String, sql: String)] {
        let name = SQL.identifier(database)
        var statements: [(String, String)] = []
        if !noOwner { statements.append(("owner \(owner)", "ALTER DATABASE \(name) OWNER TO \(SQL.identifier(owner))")) }
        if let comment { statements.append(("comment", "COMMENT ON DATABASE \(name) IS \(SQL.literal(comment))")) }
        if connectionLimit != -1 {
            statements.append(("connection limit \(connectionLimit)", "ALTER DATABASE \(name) CONNECTION LIMIT \(connectionLimit)"))
        }
        if !noACL, let grants {
            // The source's privileges replace the defaults, which it may have revoked.
            statements.append(("privileges", "REVOKE ALL ON DATABASE \(name) FROM PUBLIC"))
            for grant in grants {
                let grantee = grant.grantee.map(SQL.identifier) ?? "PUBLIC"
                statements.append(
                    (
                        "\(grant.privilege) for \(grant.grantee ?? "PUBLIC")",
                        "GRANT \(grant.privilege) ON DATABASE \(name) TO \(grantee)" + (grant.grantable ? " WITH GRANT OPTION" : "")
                    ))
            }
        }
        for setting in settings where !skippingSettings.contains(setting.name) {
            let assignment = Self.assignment(setting.text)
            if let role = setting.role {
                statements.append(
                    ("setting \(setting.text) for role \(role)", "ALTER ROLE \(SQL.identifier(role)) IN DATABASE \(name) SET \(assignment)")
                )
            } else {
                statements.append(("setting \(setting.text)", "ALTER DATABASE \(name) SET \(assignment)"))
            }
        }
        return statements
    }

    /// Applies them on `target` (connected anywhere on the target server), one statement at a time:
    /// what fails (a role missing on the target, a privilege the login lacks) is returned, named,
    /// and the rest still applies.
    func apply(
        to database: String, on target: Connection, noOwner: Bool, noACL: Bool, skippingSettings: Set<String>
    ) async -> (applied: [String], failed: [String]) {
        var applied: [String] = [], failed: [String] = []
        for (what, sql) in statements(for: database, noOwner: noOwner, noACL: noACL, skippingSettings: skippingSettings) {
            do {
                try await target.execute(sql)
                applied.append(what)
            } catch {
                failed.append("\(what): \(error)")
            }
        }
        return (applied, failed)
    }

    /// Settings whose value is a list of names (`GUC_LIST_QUOTE`): stored as `a, "B c"`, set element by element.
    static let listSettings: Set<String> = [
        "search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries", "shared_preload_libraries",
    ]

    /// `name = 'value'` for a stored `name=value`, as `pg_dump` writes it: a list setting as one literal per element.
    static func assignment(_ text: String) -> String {
        let name = String(text.prefix { $0 != "=" })
        let value = String(text.dropFirst(name.count + 1))
        let quotedName = name.contains(".") ? name : SQL.identifier(name)
        guard listSettings.contains(name.lowercased()) else { return "\(quotedName) = \(SQL.literal(value))" }
        return "\(quotedName) = " + splitList(value).map(SQL.literal).joined(separator: ", ")
    }

    /// A stored list value's elements: split at commas outside double quotes; quotes removed (`""` is a quote).
    static func splitList(_ value: String) -> [String] {
        var elements: [String] = []
        var current = ""
        var quoted = false
        var characters = Array(value)[...]
        while let character = characters.popFirst() {
            switch character {
            case "\"" where quoted && characters.first == "\"":
                current.append("\"")
                characters.removeFirst()
            case "\"":
                quoted.toggle()
            case "," where !quoted:
                elements.append(current.trimmingCharacters(in: .whitespaces))
                current = ""
            default:
                current.append(character)
            }
        }
        elements.append(current.trimmingCharacters(in: .whitespaces))
        return elements.filter { !$0.isEmpty }
    }
}

extension DatabaseProperties {
    /// Reads the source database's properties and gives them to the target database, saying what
    /// was carried and, in a warning, what was not and why. A data-only copy carries none (the
    /// target database is the user's).
    static func carry(config: MigrationConfig, events: EventEmitter, stage: Stage, skippingSettings: Set<String> = []) async throws {
        guard config.dumpScope != .dataOnly else { return }
        let properties = try await config.sourceEndpoint.withConnection(label: "database properties", stage: stage) {
            try await DatabaseProperties.read(from: $0)
        }
        let database = config.targetEndpoint.databaseName
        let (applied, failed) = try await config.targetEndpoint.withConnection(label: "database properties", stage: stage) {
            await properties.apply(
                to: database, on: $0, noOwner: config.noOwner, noACL: config.noACL, skippingSettings: skippingSettings)
        }
        if !applied.isEmpty {
            events.info(
                stage, "gave the target database \(SQL.identifier(database)) the source database's " + applied.joined(separator: ", "),
                ["database_properties": .list(applied)])
        }
        if !failed.isEmpty {
            events.warning(
                stage,
                "the target database \(SQL.identifier(database)) lacks \(failed.count) of the source database's properties: "
                    + failed.joined(separator: "; "),
                ["database_properties_not_carried": .list(failed)])
        }
    }
}
