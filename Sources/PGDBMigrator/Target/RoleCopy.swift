import PostgresClient

/// `copyRoles`: the roles the migrated database needs that the target server lacks — those
/// that own its objects or the database, hold privileges on them, are named by its
/// row-level security policies or default privileges, or have settings in it — created
/// on the target before the restore, with their attributes, memberships, role-wide
/// settings and, when the source login may read it (a superuser), their password.
///
/// A password hash travels like the subscription's password: through a temporary table
/// into a statement the server runs itself, never in a statement's text, a log line or an
/// event. Roles created are never dropped by this tool.
struct RoleCopy: Sendable {
    struct Role: Sendable, Equatable {
        var name: String
        var superuser, inherit, createRole, createDB, login, replication, bypassRLS: Bool
        var connectionLimit: Int
        var validUntil: String?
        /// Roles it is a member of (that exist on the target or are created too), with ADMIN OPTION or not.
        var memberOf: [(role: String, admin: Bool)]
        /// Roles already on the target that are members of it on the source (a group created for them).
        var existingMembers: [(role: String, admin: Bool)] = []
        /// `name=value` settings of the role itself (`ALTER ROLE … SET`).
        var settings: [String]

        init(
            name: String, superuser: Bool, inherit: Bool, createRole: Bool, createDB: Bool, login: Bool, replication: Bool,
            bypassRLS: Bool, connectionLimit: Int, validUntil: String?, memberOf: [(role: String, admin: Bool)],
            existingMembers: [(role: String, admin: Bool)], settings: [String]
        ) {
            (self.name, self.superuser, self.inherit, self.createRole, self.createDB) = (name, superuser, inherit, createRole, createDB)
            (self.login, self.replication, self.bypassRLS, self.connectionLimit) = (login, replication, bypassRLS, connectionLimit)
            (self.validUntil, self.memberOf, self.existingMembers, self.settings) = (validUntil, memberOf, existingMembers, settings)
        }

        static func == (a: Role, b: Role) -> Bool { a.name == b.name }

        var attributes: [String] {
            [
                superuser ? "SUPERUSER" : "NOSUPERUSER", inherit ? "INHERIT" : "NOINHERIT",
                createRole ? "CREATEROLE" : "NOCREATEROLE", createDB ? "CREATEDB" : "NOCREATEDB",
                login ? "LOGIN" : "NOLOGIN", replication ? "REPLICATION" : "NOREPLICATION",
                bypassRLS ? "BYPASSRLS" : "NOBYPASSRLS", "CONNECTION LIMIT \(connectionLimit)",
            ] + (validUntil.map { ["VALID UNTIL \(SQL.literal($0))"] } ?? [])
        }
    }

    var roles: [Role]

    /// The roles of `names` as the source defines them.
    static func read(_ names: [String], from source: Connection, existingOnTarget: Set<String>) async throws -> RoleCopy {
        guard !names.isEmpty else { return RoleCopy(roles: []) }
        let creating = Set(names)
        var roles: [Role] = []
        for row in try await source.query(
            """
            SELECT rolname, rolsuper::text, rolinherit::text, rolcreaterole::text, rolcreatedb::text, rolcanlogin::text,
                   rolreplication::text, rolbypassrls::text, rolconnlimit::text, rolvaliduntil::text
            FROM pg_roles WHERE rolname = ANY ($1::text[]) ORDER BY rolname
            """, [SQL.textArray(names)]
        ).rows {
            let name = row[0]!
            let memberships = try await source.query(
                """
                SELECT pg_get_userbyid(m.roleid), m.admin_option::text FROM pg_auth_members m
                WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1) ORDER BY 1
                """, [name]
            ).rows.compactMap { row -> (String, Bool)? in
                guard let parent = row[0], existingOnTarget.contains(parent) || creating.contains(parent) else { return nil }
                return (parent, row[1] == "true")
            }
            let existingMembers = try await source.query(
                """
                SELECT pg_get_userbyid(m.member), m.admin_option::text FROM pg_auth_members m
                WHERE m.roleid = (SELECT oid FROM pg_roles WHERE rolname = $1) ORDER BY 1
                """, [name]
            ).rows.compactMap { row -> (String, Bool)? in
                guard let member = row[0], existingOnTarget.contains(member) else { return nil }
                return (member, row[1] == "true")
            }
            let settings = try await source.query(
                """
                SELECT unnest(setconfig) FROM pg_db_role_setting
                WHERE setdatabase = 0 AND setrole = (SELECT oid FROM pg_roles WHERE rolname = $1)
                """, [name]
            ).rows.compactMap { $0[0] }
            roles.append(
                Role(
                    name: name, superuser: row[1] == "true", inherit: row[2] == "true", createRole: row[3] == "true",
                    createDB: row[4] == "true", login: row[5] == "true", replication: row[6] == "true", bypassRLS: row[7] == "true",
                    connectionLimit: Int(row[8] ?? "-1") ?? -1, validUntil: row[9], memberOf: memberships,
                    existingMembers: existingMembers, settings: settings))
        }
        return RoleCopy(roles: roles)
    }

    /// Why the target login cannot create these roles, if it cannot: it needs CREATEROLE (or to be a
    /// superuser), and only a superuser creates superusers, and REPLICATION or BYPASSRLS roles (from
    /// PostgreSQL 16 a CREATEROLE login may give those only when it has them itself).
    func refusal(on target: Connection) async throws -> String? {
        guard !roles.isEmpty else { return nil }
        let row = try await target.query(
            "SELECT rolsuper::text, rolcreaterole::text, rolreplication::text, rolbypassrls::text FROM pg_roles WHERE rolname = current_user"
        ).rows[0]
        if row[0] == "true" { return nil }
        guard row[1] == "true" else {
            return "the target login may not create roles (it needs CREATEROLE, or to be a superuser) and "
                + "\(roles.count) must be created: " + roles.map(\.name).joined(separator: ", ")
        }
        var needs: [String] = []
        needs += roles.filter(\.superuser).map { "\($0.name) (superuser)" }
        if row[2] != "true" { needs += roles.filter(\.replication).map { "\($0.name) (REPLICATION)" } }
        if row[3] != "true" { needs += roles.filter(\.bypassRLS).map { "\($0.name) (BYPASSRLS)" } }
        guard !needs.isEmpty else { return nil }
        return "the target login may not create these roles with their attributes: " + needs.joined(separator: ", ")
    }

    /// Creates the roles on `target`, then their memberships and settings; with `passwords` (hashes by
    /// role, read from the source), each gets its own. Returns the roles left without a password.
    func create(on target: Connection, passwords: [String: String], events: EventEmitter) async throws -> [String] {
        for role in roles {
            try await target.execute("CREATE ROLE \(SQL.identifier(role.name)) WITH " + role.attributes.joined(separator: " "))
            if let hash = passwords[role.name] {
                try await SecretKeepingStatement(
                    template: "ALTER ROLE \(SQL.identifier(role.name)) PASSWORD \(SecretKeepingStatement.conninfo)", secret: hash,
                    secretName: "the password hash of role \(role.name)"
                ).run(on: target, events: events, stage: .restore) {}
            }
        }
        for role in roles {
            for (parent, admin) in role.memberOf {
                try await target.execute(
                    "GRANT \(SQL.identifier(parent)) TO \(SQL.identifier(role.name))" + (admin ? " WITH ADMIN OPTION" : ""))
            }
            for (member, admin) in role.existingMembers {
                try await target.execute(
                    "GRANT \(SQL.identifier(role.name)) TO \(SQL.identifier(member))" + (admin ? " WITH ADMIN OPTION" : ""))
            }
            for setting in role.settings {
                try await target.execute("ALTER ROLE \(SQL.identifier(role.name)) SET \(DatabaseProperties.assignment(setting))")
            }
        }
        return roles.filter { $0.login && passwords[$0.name] == nil }.map(\.name)
    }

    /// The password hashes of `names`, when the source login may read them (`pg_authid`: superusers).
    static func passwords(of names: [String], on source: Connection) async -> [String: String] {
        guard
            let rows = try? await source.query(
                "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY ($1::text[]) AND rolpassword IS NOT NULL",
                [SQL.textArray(names)]
            ).rows
        else { return [:] }
        return Dictionary(rows.compactMap { row in row[1].map { (row[0]!, $0) } }, uniquingKeysWith: { first, _ in first })
    }

    /// The roles the migrated database needs: owners, grantees, policies' roles, default privileges' roles
    /// (``Preflight/referencedRolesSQL``), and those with settings in it.
    static let neededRolesSQL = """
        SELECT rolname FROM (\(Preflight.referencedRolesSQL)) referenced(rolname, kind)
        UNION
        SELECT pg_get_userbyid(s.setrole) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
        WHERE d.datname = current_database() AND s.setrole <> 0
        """
}
