import PostgresClient

/// What preflight learned about the two servers, for the phases that follow.
struct PreflightReport: Sendable {
    var tools: PostgresTools
    var sourceServerVersion: Int
    var targetServerVersion: Int
    /// False when the target database must be created before restoring.
    var targetDatabaseExists: Bool
    var sourceDatabase: DatabaseSettings
    /// What the migration carries, resolved once with pg_dump's pattern rules.
    var tables: TableSet
    /// With `copyRoles`: the roles to create on the target before the restore.
    var rolesToCreate = RoleCopy(roles: [])
}

/// Encoding and locale of the source database, so a target we create sorts and stores text the same way.
struct DatabaseSettings: Sendable {
    var encoding: String
    var collate: String
    var ctype: String
}

/// The Validate phase: every check that can fail fast does so here, before
/// anything is written anywhere, with a message that names the fix.
struct Preflight {
    var config: MigrationConfig
    var events: EventEmitter
    /// What this run does with an interrupted one: the target may hold its copy, or be made again.
    var resumePlan: ResumePlan = .fresh
    var dropsTarget: Bool { config.dropTargetFirst || resumePlan.recreatesTarget }

    var source: Endpoint { config.sourceEndpoint }
    var target: Endpoint { config.targetEndpoint }

    /// Runs every check; `more` adds checks of its own with both connections open
    /// (the target one is to the maintenance database when the target database does not exist yet).
    func run(
        more: (_ source: Connection, _ target: Connection, _ tables: TableSet) async throws -> Void = { _, _, _ in }
    ) async throws -> PreflightReport {
        let tools = try await PostgresTools.locate(in: config.pgBinDirectory)
        events.info(.validate, "found \(tools.pgDump.versionLine)", ["pg_dump.path": .string(tools.pgDump.path)])

        let sourceConnection = try await source.connect()
        let sourceVersion = await sourceConnection.serverVersion
        try PostgresTools.require(tools.pgDump, atLeast: sourceVersion, server: "source")
        let settings = try await databaseSettings(sourceConnection)
        let tables = try await TableSet.resolve(config.filter, on: sourceConnection)

        let (targetConnection, targetExists) = try await connectTarget()
        let targetVersion = await targetConnection.serverVersion
        try PostgresTools.require(tools.pgRestore, atLeast: targetVersion, server: "target")
        if try await targetConnection.scalar("SELECT pg_is_in_recovery()") == "t" {
            throw MigrationError(
                .validate, "the target server is a read-only standby (in recovery)",
                fix: "point \(Setting.target) at the primary")
        }

        var rolesToCreate = RoleCopy(roles: [])
        if config.dumpScope != .dataOnly {
            try await checkExtensions(source: sourceConnection, target: targetConnection)
            if config.copyRoles {
                rolesToCreate = try await rolesToCopy(source: sourceConnection, target: targetConnection)
            } else {
                try await checkRoles(source: sourceConnection, target: targetConnection)
            }
        }
        let existingEncoding =
            targetExists && !dropsTarget
            ? try await databaseSettings(targetConnection).encoding : nil
        let lacking = try await TargetFeatures(tables: tables).problems(
            source: sourceConnection, target: targetConnection, existingTargetEncoding: existingEncoding,
            sourceEncoding: settings.encoding)
        guard lacking.isEmpty else {
            throw MigrationError(
                .validate, "the target server lacks what the migrated data needs: " + lacking.joined(separator: "; "),
                fix: "each item above says what to do; nothing was written", code: .preflight)
        }
        if targetExists && !dropsTarget && config.dumpScope != .dataOnly && !resumePlan.targetHoldsRecordedCopy {
            try await checkEmpty(targetConnection)
        }
        if targetExists && dropsTarget {
            try await TargetDatabase(target: target, events: events)
                .checkDrop(on: targetConnection, terminatingSessions: config.terminateTargetSessions)
        }
        if targetExists && config.dumpScope == .dataOnly {
            try await checkTablesEmpty(tables, on: targetConnection)
        }
        try await more(sourceConnection, targetConnection, tables)
        // Closed now, not whenever they are freed: a session left on the target database would hold up its drop.
        await sourceConnection.close()
        await targetConnection.close()

        events.info(
            .validate, "source and target ready",
            [
                "source.version": .int(sourceVersion), "target.version": .int(targetVersion),
                "source": .string(config.source.redacted), "target": .string(config.target.redacted),
                "target.database_exists": .bool(targetExists),
            ])
        return PreflightReport(
            tools: tools, sourceServerVersion: sourceVersion, targetServerVersion: targetVersion,
            targetDatabaseExists: targetExists, sourceDatabase: settings, tables: tables, rolesToCreate: rolesToCreate)
    }

    /// `copyRoles`: the roles the database needs that the target lacks, refused here when the target
    /// login could not create them.
    private func rolesToCopy(source: Connection, target: Connection) async throws -> RoleCopy {
        let needed = try await source.query(RoleCopy.neededRolesSQL).rows.compactMap { $0[0] }
        let existing = Set(try await target.query("SELECT rolname FROM pg_roles").rows.compactMap { $0[0] })
        let roles = try await RoleCopy.read(needed.filter { !existing.contains($0) }, from: source, existingOnTarget: existing)
        if let refusal = try await roles.refusal(on: target) {
            throw MigrationError(
                .validate, refusal,
                fix: "run with a target login that may create them (CREATEROLE; a superuser for superusers, REPLICATION or "
                    + "BYPASSRLS roles), or create them yourself and run without \(Setting.copyRoles)", code: .preflight)
        }
        if !roles.roles.isEmpty {
            events.info(
                .validate, "\(roles.roles.count) role(s) will be created on the target: " + roles.roles.map(\.name).joined(separator: ", "),
                ["roles": .list(roles.roles.map(\.name))])
        }
        return roles
    }

    // MARK: - Target database

    /// Connects to the target database; when it does not exist, connects to the
    /// server's maintenance database instead and checks that we may create it.
    private func connectTarget() async throws -> (Connection, exists: Bool) {
        let name = target.databaseName
        let original: Error
        do {
            return (try await target.connect(), true)
        } catch {
            original = error
        }
        // The failure may be a missing database; find out through the maintenance database.
        guard let maintenance = try? await target.connect(database: TargetDatabase.maintenanceDatabase(for: name)) else {
            throw original
        }
        let exists = try await maintenance.scalar("SELECT 1 FROM pg_database WHERE datname = $1", [name]) != nil
        if exists {
            await maintenance.close()
            throw original
        }
        let mayCreate = try await maintenance.scalar(
            "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
        guard mayCreate == "t" else {
            let user = try await maintenance.scalar("SELECT current_user") ?? "?"
            await maintenance.close()
            throw MigrationError(
                .validate, "the target database \(SQL.identifier(name)) does not exist and role \(SQL.identifier(user)) may not create it",
                fix: "create it first (CREATE DATABASE \(SQL.identifier(name))) or grant CREATEDB to \(SQL.identifier(user))")
        }
        return (maintenance, false)
    }

    private func databaseSettings(_ connection: Connection) async throws -> DatabaseSettings {
        let row = try await connection.query(
            """
            SELECT pg_encoding_to_char(encoding), datcollate, datctype
            FROM pg_database WHERE datname = current_database()
            """
        ).rows[0]
        return DatabaseSettings(encoding: row[0] ?? "UTF8", collate: row[1] ?? "C", ctype: row[2] ?? "C")
    }

    // MARK: - Extensions, roles, emptiness

    private func checkExtensions(source: Connection, target: Connection) async throws {
        let used = try await source.query("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1")
            .rows.compactMap { $0[0] }
        guard !used.isEmpty else { return }
        let available = Set(try await target.query("SELECT name FROM pg_available_extensions").rows.compactMap { $0[0] })
        let missing = used.filter { !available.contains($0) }
        guard !missing.isEmpty else { return }
        let message = "extensions used on the source are not available on the target: \(missing.joined(separator: ", "))"
        if config.allowRestoreErrors {
            events.warning(.validate, message, ["extensions.missing": .list(missing)])
            return
        }
        throw MigrationError(
            .validate, message,
            fix: "install them on the target server (e.g. the postgresql-contrib package), "
                + "or pass \(Setting.allowRestoreErrors) to restore without them")
    }

    /// Roles that own objects in (or the database itself), hold privileges on, or are named by
    /// row-level security policies of, the source database but do not exist on the target:
    /// `pg_restore` (or the database's properties) would fail on each of them, after the copy.
    private func checkRoles(source: Connection, target: Connection) async throws {
        let referenced = try await source.query(Self.referencedRolesSQL).rows.map { (name: $0[0]!, kind: $0[1]!) }
        let existing = Set(try await target.query("SELECT rolname FROM pg_roles").rows.compactMap { $0[0] })
        let missing = referenced.filter { !existing.contains($0.name) }
        let missingOwners = missing.filter { $0.kind == "owner" }.map(\.name)
        let missingGrantees = missing.filter { $0.kind == "grantee" }.map(\.name)
        let missingPolicyRoles = missing.filter { $0.kind == "policy" }.map(\.name)
        var problems: [String] = []
        if !missingPolicyRoles.isEmpty {
            problems.append(
                "roles named by row-level security policies missing on the target: \(missingPolicyRoles.joined(separator: ", "))")
        }
        if !config.noOwner && !missingOwners.isEmpty {
            problems.append("owners missing on the target: \(missingOwners.joined(separator: ", ")) (or pass \(Setting.noOwner))")
        }
        if !config.noACL && !missingGrantees.isEmpty {
            problems.append(
                "roles with privileges missing on the target: \(missingGrantees.joined(separator: ", ")) (or pass \(Setting.noACL))")
        }
        guard !problems.isEmpty else { return }
        let message = problems.joined(separator: "; ")
        if config.allowRestoreErrors {
            events.warning(.validate, message, ["roles.missing": .list(missing.map(\.name))])
            return
        }
        throw MigrationError(
            .validate, message,
            fix: "create the roles on the target first (pg_dumpall --roles-only from the source), "
                + "or pass \(Setting.noOwner) (objects owned by the target user) and/or \(Setting.noACL) (no GRANTs)")
    }

    static let referencedRolesSQL = """
        WITH user_namespaces AS (
            SELECT oid, nspowner, nspacl FROM pg_namespace
            WHERE \(UserSchemas.predicate("nspname"))
        ),
        owners AS (
            SELECT nspowner AS role FROM user_namespaces
            UNION SELECT relowner FROM pg_class WHERE relnamespace IN (SELECT oid FROM user_namespaces)
            UNION SELECT proowner FROM pg_proc WHERE pronamespace IN (SELECT oid FROM user_namespaces)
            UNION SELECT typowner FROM pg_type WHERE typnamespace IN (SELECT oid FROM user_namespaces)
            UNION SELECT lomowner FROM pg_largeobject_metadata
            UNION SELECT datdba FROM pg_database WHERE datname = current_database()
        ),
        policy_roles AS (
            SELECT unnest(polroles) AS role FROM pg_policy
            WHERE polrelid IN (SELECT oid FROM pg_class WHERE relnamespace IN (SELECT oid FROM user_namespaces))
        ),
        grantees AS (
            SELECT (aclexplode(nspacl)).grantee AS role FROM user_namespaces WHERE nspacl IS NOT NULL
            UNION SELECT (aclexplode(relacl)).grantee FROM pg_class
                WHERE relacl IS NOT NULL AND relnamespace IN (SELECT oid FROM user_namespaces)
            UNION SELECT (aclexplode(proacl)).grantee FROM pg_proc
                WHERE proacl IS NOT NULL AND pronamespace IN (SELECT oid FROM user_namespaces)
            UNION SELECT (aclexplode(datacl)).grantee FROM pg_database WHERE datname = current_database() AND datacl IS NOT NULL
            -- ALTER DEFAULT PRIVILEGES: the role they are for, and the roles they grant to
            UNION SELECT defaclrole FROM pg_default_acl
            UNION SELECT (aclexplode(defaclacl)).grantee FROM pg_default_acl
        )
        SELECT r.rolname,
               CASE WHEN r.oid IN (SELECT role FROM policy_roles) THEN 'policy'
                    WHEN r.oid IN (SELECT role FROM owners) THEN 'owner' ELSE 'grantee' END
        FROM pg_roles r
        WHERE r.oid IN (SELECT role FROM owners UNION SELECT role FROM grantees UNION SELECT role FROM policy_roles)
        ORDER BY 1
        """

    /// `--dump-scope data-only` loads rows into the target's own tables: into a
    /// table that holds rows already, that would duplicate them (or fail half-way
    /// on a key), so any such table is refused, by name.
    private func checkTablesEmpty(_ tables: TableSet, on target: Connection) async throws {
        var holdingRows: [String] = []
        for table in tables.tables where holdingRows.count < 10 {
            guard try await target.scalar("SELECT to_regclass($1)::text", [table.description]) != nil else { continue }
            if try await target.scalar("SELECT 1 FROM ONLY \(table) LIMIT 1") != nil { holdingRows.append(table.shown) }
        }
        guard holdingRows.isEmpty else {
            throw MigrationError(
                .validate,
                "\(Setting.dumpScope) data-only loads rows into the target's tables, and these already hold rows: "
                    + holdingRows.joined(separator: ", ") + (holdingRows.count == 10 ? ", …" : "") + "; nothing was changed",
                fix: "empty them first (TRUNCATE) if their rows may go, or leave them out with \(Setting.excludeTables)")
        }
    }

    /// Refuses a target database that already holds user objects: restoring
    /// into it would mix two databases or fail half-way.
    private func checkEmpty(_ target: Connection) async throws {
        let found = try await target.query(
            """
            SELECT kind, name FROM (
                SELECT 'schema' AS kind, quote_ident(nspname) AS name FROM pg_namespace
                WHERE nspname <> 'public' AND \(UserSchemas.predicate("nspname"))
                UNION ALL
                SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
                            WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' ELSE 'relation' END,
                       quote_ident(n.nspname) || '.' || quote_ident(c.relname)
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                  AND \(UserSchemas.predicate("n.nspname"))
                UNION ALL
                SELECT 'function', quote_ident(n.nspname) || '.' || quote_ident(p.proname)
                FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE \(UserSchemas.predicate("n.nspname"))
                  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
                UNION ALL
                SELECT 'extension', quote_ident(extname) FROM pg_extension WHERE extname <> 'plpgsql'
                UNION ALL
                SELECT 'large object', oid::text FROM pg_largeobject_metadata
            ) objects ORDER BY 1, 2
            """
        ).rows
        guard !found.isEmpty else { return }
        var counts: [String: Int] = [:]
        for row in found { counts[row[0]!, default: 0] += 1 }
        let summary = counts.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)\($0.value == 1 ? "" : "s")" }
        let examples = found.prefix(5).map { $0[1]! }
        throw MigrationError(
            .validate,
            "the target database \(SQL.identifier(target.connectionString.resolvedDatabase ?? "?")) is not empty: "
                + "\(summary.joined(separator: ", ")) (e.g. \(examples.joined(separator: ", ")))",
            fix: "pass \(Setting.dropTargetFirst) to drop and re-create it, point \(Setting.target) at an empty database, "
                + "or, if an interrupted run of this migration filled it, rerun that command with \(Setting.resume)", code: .notOurs)
    }
}
