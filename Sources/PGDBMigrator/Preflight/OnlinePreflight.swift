import PostgresClient

/// The online path's extra checks, run after the offline ones and before
/// anything is created: each failure names the fix and leaves nothing behind.
struct OnlinePreflight {
    var config: MigrationConfig
    var events: EventEmitter
    /// This run's, to tell a publication it created (a resumed copy reuses it) from another run's.
    var runID: String
    var settings: OnlineSettings { config.online }

    /// What the checks found that the run needs.
    struct Findings: Sendable {
        /// Whether the publication already exists (so we must never drop it).
        var publicationExists: Bool
        /// The connection string the subscription will use, proven to work from the target server; nil under relay apply.
        var subscriptionSource: ConnectionString?
        /// How the changes will reach the target (never ``OnlineSettings/ApplyMethod/auto``).
        var apply: OnlineSettings.ApplyMethod { subscriptionSource == nil ? .relay : .subscription }
    }

    func run(source: Connection, target: Connection, tables: TableSet) async throws -> Findings {
        try await checkSourceSettings(source)
        let subscriptionSource = try await chooseApply(source: source, target: target)

        let publication = Publication(name: settings.publication, runID: runID)
        let owner = try await publication.owner(on: source)
        if owner == .anotherRun {
            // That run drops it at its cutover: streaming through it would end with it.
            throw MigrationError(
                .validate,
                "the publication \(SQL.identifier(settings.publication)) on the source belongs to another pg_dbmigrator run "
                    + "(its comment says so), which drops it at its cutover",
                fix: "pass \(Setting.publication) with a name of this run's own (it is created, and dropped at this run's cutover)",
                code: .notOurs)
        }
        let publicationExists = owner != nil
        if !publicationExists && !settings.autoCreatePublication {
            throw MigrationError(
                .validate, "the publication \(SQL.identifier(settings.publication)) does not exist on the source",
                fix: "create it (CREATE PUBLICATION \(SQL.identifier(settings.publication)) FOR ALL TABLES) "
                    + "or drop \(Setting.autoCreatePublication)")
        }
        if publicationExists {
            // An existing publication must carry every change of exactly the migrated tables.
            let problems = try await publication.coverageProblems(of: tables, on: source)
            guard problems.isEmpty else {
                throw MigrationError(
                    .validate,
                    "the publication \(SQL.identifier(settings.publication)) does not carry exactly the migrated tables' changes: "
                        + problems.joined(separator: "; "),
                    fix: "let this run create its own (pass a \(Setting.publication) name that does not exist), or change the publication "
                        + "to publish every migrated table, all of insert, update, delete and truncate, without row filters or column lists"
                )
            }
        }
        try await checkReplicaIdentity(source, tables: tables.published)
        if settings.freezeSourceAtCutover { try await checkFreezePrivileges(source, tables: tables.tables) }
        try await warnAboutWhatIsNotReplicated(source)
        return Findings(publicationExists: publicationExists, subscriptionSource: subscriptionSource)
    }

    /// The subscription's connection string, tried from the target server now rather than after
    /// hours of copying: a password only this process has (PGPASSWORD, a passfile), a CA or key
    /// path that exists here but not there, a TLS mode the source does not offer, a host the
    /// target cannot reach — each fails here, before the slot is created.
    private func checkSubscriptionConnection(source: Connection, target: Connection) async throws -> ConnectionString {
        let conninfo = try SubscriptionConnection.resolve(
            own: await source.settingsInEffect(), given: settings.subscriptionSource,
            targetServerVersion: await target.serverVersion, events: events)
        do {
            try await Subscription.probe(on: target, connectingTo: conninfo, events: events)
        } catch is SecretKeepingStatement.Exposed {
            events.warning(
                .validate,
                "the subscription's connection is not tried before the copy: as a non-superuser, trying it would put "
                    + "its password in the target's server log (log_min_messages is below error); it is tried when the subscription is created"
            )
            return conninfo
        } catch let error as PostgresError {
            let targetDatabase = config.targetEndpoint.databaseName
            if error.sqlState == PostgresError.insufficientPrivilege, try await target.scalar("SELECT current_database()") != targetDatabase
            {
                // Before PostgreSQL 16 only superusers subscribe; after, CREATE on the database is needed too,
                // which a non-superuser may have on the target database (made later) but not on this one.
                events.warning(
                    .validate,
                    "cannot try the subscription's connection before the target database exists (\(error.message)); "
                        + "it is tried when the subscription is created")
                return conninfo
            }
            throw MigrationError(
                .validate,
                "the target server cannot connect to the source for the subscription (\(conninfo.redacted)): "
                    + conninfo.scrub(error.description),
                fix: "pass \(Setting.subscriptionSource) as the target server must connect: a host and port it reaches, sslrootcert, "
                    + "sslcert and sslkey paths on the target server, and the password (a non-superuser subscription owner "
                    + "must have it in the string from PostgreSQL 16); with no route from the target to the source, use \(Setting.apply) relay"
            )
        }
        events.info(
            .validate, "the target server reaches the source with the subscription's connection string",
            ["subscription_source": .string(conninfo.redacted)])
        return conninfo
    }

    /// A number of relay sessions given for a relay apply that will not run: said, not silently ignored.
    private func subscriptionChosen(_ conninfo: ConnectionString) -> ConnectionString {
        if settings.relaySessions != 1 {
            events.info(
                .validate,
                "\(Setting.relaySessions) \(settings.relaySessions) is not used: a subscription applies the changes (the target's own apply worker)",
                ["relay_sessions": .int(settings.relaySessions)])
        }
        return conninfo
    }

    private func checkSourceSettings(_ source: Connection) async throws {
        // First: a standby's own settings (wal_level, slots) would only mislead about the fix.
        if try await source.scalar("SELECT pg_is_in_recovery()") == "t" {
            throw MigrationError(
                .validate,
                "the source is a standby (in recovery): the publication and the replication slot an online "
                    + "migration needs are created, and streamed from, on the primary",
                fix: "point \(Setting.source) at the primary; an offline copy (\(Setting.mode) offline) may read from a standby")
        }
        let row = try await source.query(
            """
            SELECT current_setting('wal_level'),
                   current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots),
                   current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication),
                   (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
                   current_user,
                   EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)
            """, [settings.slotName]
        ).rows[0]
        if row[0] != "logical" {
            throw MigrationError(
                .validate, "wal_level is '\(row[0] ?? "?")' on the source; online migration needs 'logical'",
                fix: "run ALTER SYSTEM SET wal_level = 'logical' on the source and restart it")
        }
        if Int(row[1] ?? "0") ?? 0 < 1 {
            throw MigrationError(
                .validate, "no free replication slot on the source (max_replication_slots is used up)",
                fix: "raise max_replication_slots on the source (restart needed) or drop an unused slot")
        }
        if Int(row[2] ?? "0") ?? 0 < 1 {
            throw MigrationError(
                .validate, "no free WAL sender on the source (max_wal_senders is used up)",
                fix: "raise max_wal_senders on the source (restart needed)")
        }
        if row[3] != "t" {
            throw MigrationError(
                .validate, "the source role \(SQL.identifier(row[4] ?? "?")) has neither REPLICATION nor superuser",
                fix: "ALTER ROLE \(SQL.identifier(row[4] ?? "?")) REPLICATION on the source")
        }
        if row[5] == "t" {
            let slot = try await ReplicationSlot.describe(named: settings.slotName, on: source)
            throw MigrationError(
                .validate,
                "a replication slot named \(SQL.identifier(settings.slotName)) already exists on the source"
                    + (slot.map { " (\($0.summary))" } ?? "") + "; this run did not create it, so it is left alone",
                fix:
                    "choose another \(Setting.slotName); if an interrupted run of this tool recorded it, \(Setting.mode) cleanup with that run's "
                    + "\(Setting.stateDirectory) removes it (\(Setting.forceClean) does the same before starting); otherwise, if no one needs it, "
                    + "\(Setting.mode) cleanup \(Setting.dropForeignSlot) \(settings.slotName)", code: .notOurs)
        }
    }

    private func checkTarget(_ target: Connection) async throws {
        let version = await target.serverVersion
        let membership = version >= 160_000 ? "pg_has_role(current_user, 'pg_create_subscription', 'USAGE')" : "false"
        let row = try await target.query(
            """
            SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR \(membership),
                   current_setting('max_logical_replication_workers')::int,
                   EXISTS (SELECT 1 FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid
                           WHERE s.subname = $1 AND d.datname = $2),
                   current_user
            """, [settings.subscriptionName, config.target.resolvedDatabase]
        ).rows[0]
        if row[0] != "t" {
            let need = version >= 160_000 ? "membership in pg_create_subscription" : "superuser (before PostgreSQL 16)"
            throw MigrationError(
                .validate, "the target role \(SQL.identifier(row[3] ?? "?")) may not create subscriptions: it needs \(need)",
                fix: version >= 160_000
                    ? "GRANT pg_create_subscription TO \(SQL.identifier(row[3] ?? "?")) on the target"
                    : "connect to the target as a superuser")
        }
        if Int(row[1] ?? "0") ?? 0 < 1 {
            throw MigrationError(
                .validate, "max_logical_replication_workers is 0 on the target: no apply worker could run",
                fix: "raise max_logical_replication_workers (and max_worker_processes) on the target; restart needed")
        }
        if row[2] == "t" {
            throw MigrationError(
                .validate, "a subscription named \(SQL.identifier(settings.subscriptionName)) already exists on the target",
                fix:
                    "choose another \(Setting.subscriptionName); if an interrupted run of this tool created it, \(Setting.mode) cleanup with "
                    + "that run's \(Setting.stateDirectory) removes it (\(Setting.forceClean) does the same before starting)",
                code: .notOurs)
        }
    }

    /// The subscription's connection string, or nil for relay apply: as asked, or under `auto` a subscription
    /// when the target may create one and reaches the source, else relay (said, with the reason).
    private func chooseApply(source: Connection, target: Connection) async throws -> ConnectionString? {
        let wantsSubscription = settings.subscriptionSource != nil || settings.keepSubscription
        switch settings.apply == .auto && wantsSubscription ? .subscription : settings.apply {
        case .relay:
            try await checkRelayTarget(target)
            return nil
        case .subscription:
            try await checkTarget(target)
            return subscriptionChosen(try await checkSubscriptionConnection(source: source, target: target))
        case .auto:
            let why: MigrationError
            do {
                try await checkTarget(target)
                return subscriptionChosen(try await checkSubscriptionConnection(source: source, target: target))
            } catch let error as MigrationError where error.code != .notOurs {
                why = error
            }
            do {
                try await checkRelayTarget(target)
            } catch let relayError as MigrationError {
                throw MigrationError(
                    .validate, "neither a subscription nor relay apply can work: \(why.message); and \(relayError.message)",
                    fix: (why.fix.map { "for a subscription: \($0); " } ?? "") + (relayError.fix.map { "for relay apply: \($0)" } ?? ""),
                    code: relayError.code)
            }
            // A subscription name given for a subscription that will not be made: said, not silently ignored.
            let unused =
                settings.subscriptionName == OnlineSettings.defaultSubscriptionName
                ? "" : " (\(Setting.subscriptionName) \(settings.subscriptionName) is not used: relay apply makes no subscription)"
            events.info(
                .validate, "relay apply chosen (\(Setting.apply) auto): a subscription cannot work here: \(why.message)\(unused)",
                ["apply": .string(OnlineSettings.ApplyMethod.relay.rawValue), "reason": .string(why.message)])
            return nil
        }
    }

    /// Relay apply keeps its position in a replication origin on the target, set up by its session: the
    /// login must be allowed to (a superuser; from PostgreSQL 14 any role granted the functions), the server
    /// must have room for one, and no origin of that name may be another's.
    private func checkRelayTarget(_ target: Connection) async throws {
        let version = await target.serverVersion
        let room = version >= 180_000 ? "max_active_replication_origins" : "max_replication_slots"
        let granted = version >= 140_000 ? "has_function_privilege('pg_replication_origin_session_setup(text)', 'EXECUTE')" : "false"
        let replicaRole = version >= 150_000 ? "has_parameter_privilege('session_replication_role', 'SET')" : "false"
        let row = try await target.query(
            """
            SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \(granted), \(replicaRole),
                   current_setting('\(room)')::int, EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1), current_user
            """, [settings.relayOrigin]
        ).rows[0]
        let role = SQL.identifier(row[5] ?? "?")
        let superuser = row[0] == "t"
        if !superuser && row[1] != "t" {
            throw MigrationError(
                .validate, "the target role \(role) may not use replication origins, where relay apply keeps its position",
                fix: version >= 140_000
                    ? "as a superuser on the target: GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), "
                        + "pg_replication_origin_drop(text), pg_replication_origin_session_setup(text), "
                        + "pg_replication_origin_session_progress(boolean), pg_replication_origin_progress(text, boolean), "
                        + "pg_replication_origin_xact_setup(pg_lsn, timestamptz), "
                        + "pg_replication_origin_xact_reset() TO \(role)"
                    : "connect to the target as a superuser (before PostgreSQL 14 only superusers may use replication origins)")
        }
        if Int(row[3] ?? "0") ?? 0 < 1 {
            throw MigrationError(
                .validate, "\(room) is 0 on the target: relay apply needs one replication origin",
                fix: "raise \(room) on the target; restart needed")
        }
        if row[4] == "t" {
            throw MigrationError(
                .validate, "a replication origin named \(SQL.identifier(settings.relayOrigin)) already exists on the target",
                fix: "choose another \(Setting.slotName) (the origin is named after it); if an interrupted run of this tool created it, "
                    + "\(Setting.mode) cleanup with that run's \(Setting.stateDirectory) removes it", code: .notOurs)
        }
        if !superuser && row[2] != "t" {
            events.warning(
                .validate,
                "the target role \(role) may not set session_replication_role: while relay apply runs, the target's triggers fire and "
                    + "its foreign keys are checked (the source's commit order keeps them satisfied); "
                    + (version >= 150_000
                        ? "GRANT SET ON PARAMETER session_replication_role TO \(role) to apply as the target's own apply worker does"
                        : "connect as a superuser to apply as the target's own apply worker does"))
        }
        events.info(
            .validate,
            "relay apply: this process streams the changes into the target, which never connects to the source "
                + "(its position: replication origin \(SQL.identifier(settings.relayOrigin)))")
    }

    /// Tables without a primary key or replica identity: once published,
    /// UPDATE and DELETE on them fail *on the source*. List them; fix them only when told to.
    private func checkReplicaIdentity(_ source: Connection, tables: [QualifiedName]) async throws {
        // Each table without a usable identity, and each with FULL (already, or about to be set): the apply
        // worker then finds each old row by comparing every column.
        let identities = try await source.query(
            """
            SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relreplident = 'f'
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
              AND (c.relreplident IN ('n', 'f')
                   OR (c.relreplident = 'd' AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
                   OR (c.relreplident = 'i' AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)))
            ORDER BY 1
            """, [SQL.textArray(tables.map(\.schema)), SQL.textArray(tables.map(\.name))]
        ).rows
        let full = identities.filter { $0[1] == "t" }.map { $0[0]! }
        let lacking = identities.filter { $0[1] != "t" }.map { $0[0]! }
        try await checkFullIdentityComparable(source, tables: full + (settings.setReplicaIdentityFull ? lacking : []))
        guard !lacking.isEmpty else { return }
        if settings.setReplicaIdentityFull {
            for table in lacking {
                try await source.execute("ALTER TABLE \(table) REPLICA IDENTITY FULL")
            }
            events.warning(
                .validate,
                "set REPLICA IDENTITY FULL on \(lacking.count) table(s) without a primary key (\(Setting.setReplicaIdentityFull))",
                ["tables": .list(lacking)])
            return
        }
        throw MigrationError(
            .validate,
            "\(lacking.count) published table(s) have no primary key or replica identity: \(lacking.joined(separator: ", ")); "
                + "once published, UPDATE and DELETE on them would fail on the source",
            fix: "add a primary key, or ALTER TABLE … REPLICA IDENTITY FULL (or USING INDEX), "
                + "or pass \(Setting.setReplicaIdentityFull) to have these set to FULL")
    }

    /// With REPLICA IDENTITY FULL the apply worker finds the old row of an UPDATE
    /// or DELETE by comparing every column with its type's default equality, and
    /// stops at the first column whose type has none (`json`, `point`, `xml`, or an
    /// array, domain or composite of one). Such tables are refused before anything
    /// is created, with what would work instead.
    private func checkFullIdentityComparable(_ source: Connection, tables: [String]) async throws {
        guard !tables.isEmpty else { return }
        let rows = try await source.query(Self.incomparableColumnsSQL, [SQL.textArray(tables)]).rows
        guard !rows.isEmpty else { return }
        var byTable: [String: (columns: [String], index: String?)] = [:]
        for row in rows {
            byTable[row[0]!, default: ([], row[3])].columns.append("\(row[1]!) (\(row[2]!))")
        }
        let lines = byTable.sorted { $0.key < $1.key }.map { table, found in
            "\(table): \(found.columns.joined(separator: ", "))"
                + (found.index.map { " — ALTER TABLE \(table) REPLICA IDENTITY USING INDEX \(SQL.identifier($0)) would work" }
                    ?? " — add a primary key (or a unique index on NOT NULL columns for REPLICA IDENTITY USING INDEX)")
        }
        throw MigrationError(
            .validate,
            "REPLICA IDENTITY FULL cannot work for \(byTable.count) table(s): the apply worker compares every column, and these "
                + "columns' types have no equality operator it can use: " + lines.joined(separator: "; "),
            fix: "give each table a primary key or a replica identity index as proposed, then run again")
    }

    /// The columns (`$1`: quoted table names) whose type, looked into through
    /// domains, arrays and composites, has no default btree or hash operator
    /// class — the server's own rule for an equality it can use — with a unique
    /// index each table could use as its replica identity instead.
    static let incomparableColumnsSQL = """
        WITH RECURSIVE wanted AS (SELECT name, to_regclass(name) AS oid FROM unnest($1::text[]) AS name),
        parts (name, attname, typid, shown, depth) AS (
            SELECT w.name, a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod), 0
            FROM wanted w JOIN pg_attribute a ON a.attrelid = w.oid AND a.attnum > 0 AND NOT a.attisdropped
            -- the apply worker compares stored columns only, and finds rows of a table with a primary key by it
                                          AND a.attgenerated = ''
            WHERE NOT EXISTS (SELECT 1 FROM pg_index pk WHERE pk.indrelid = w.oid AND pk.indisprimary)
            UNION ALL
            SELECT p.name, p.attname, inner_type.typid, p.shown, p.depth + 1
            FROM parts p JOIN pg_type t ON t.oid = p.typid
            CROSS JOIN LATERAL (
                SELECT t.typbasetype AS typid WHERE t.typtype = 'd'
                UNION ALL SELECT t.typelem WHERE t.typcategory = 'A' AND t.typelem <> 0 AND t.typtype <> 'd'
                UNION ALL SELECT ca.atttypid FROM pg_attribute ca
                          WHERE t.typtype = 'c' AND ca.attrelid = t.typrelid AND ca.attnum > 0 AND NOT ca.attisdropped
            ) inner_type
            WHERE p.depth < 10
        )
        SELECT DISTINCT p.name, quote_ident(p.attname), p.shown,
               (SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                WHERE i.indrelid = to_regclass(p.name) AND i.indisunique AND i.indimmediate AND i.indpred IS NULL
                  AND i.indexprs IS NULL AND i.indisvalid
                  AND NOT EXISTS (SELECT 1 FROM pg_attribute ka WHERE ka.attrelid = i.indrelid
                                  AND ka.attnum = ANY (i.indkey) AND NOT ka.attnotnull)
                ORDER BY i.indisprimary DESC, ic.relname LIMIT 1)
        FROM parts p JOIN pg_type t ON t.oid = p.typid
        WHERE t.typtype NOT IN ('d', 'c') AND NOT (t.typcategory = 'A' AND t.typelem <> 0)
          AND NOT EXISTS (
              SELECT 1 FROM pg_opclass oc JOIN pg_am am ON am.oid = oc.opcmethod
              WHERE oc.opcdefault AND am.amname IN ('btree', 'hash')
                AND (oc.opcintype = t.oid
                     OR (t.typtype = 'e' AND oc.opcintype = 'anyenum'::regtype)
                     OR (t.typtype = 'r' AND oc.opcintype = 'anyrange'::regtype)
                     OR (t.typtype = 'm' AND oc.opcintype = to_regtype('anymultirange'))
                     OR EXISTS (SELECT 1 FROM pg_cast pc WHERE pc.castsource = t.oid AND pc.casttarget = oc.opcintype
                                                         AND pc.castmethod = 'b')))
        ORDER BY 1, 2
        """

    /// The freeze needs, at cutover: the database's ownership (its read-only setting), CREATE on it
    /// (the triggers' schema) and TRIGGER on every migrated table. Found missing now, not at cutover.
    private func checkFreezePrivileges(_ source: Connection, tables: [QualifiedName]) async throws {
        let row = try await source.query(
            """
            SELECT pg_has_role(current_user, (SELECT datdba FROM pg_database WHERE datname = current_database()), 'MEMBER')
                   OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                   has_database_privilege(current_database(), 'CREATE'),
                   (SELECT string_agg(name, ', ') FROM unnest($1::text[]) AS name WHERE NOT has_table_privilege(name, 'TRIGGER')),
                   current_user
            """, [SQL.textArray(tables.map(\.description))]
        ).rows[0]
        var missing: [String] = []
        if row[0] != "t" { missing.append("ownership of the database (to make it read-only)") }
        if row[1] != "t" { missing.append("CREATE on the database (for the freeze triggers' schema)") }
        if let tables = row[2] { missing.append("TRIGGER on \(tables)") }
        guard !missing.isEmpty else { return }
        throw MigrationError(
            .validate,
            "\(Setting.freezeSourceAtCutover) needs, for role \(SQL.identifier(row[3] ?? "?")) on the source: "
                + missing.joined(separator: "; "),
            fix:
                "grant them (or run as the database owner), or cut over without \(Setting.freezeSourceAtCutover) after stopping writes yourself"
        )
    }

    private func warnAboutWhatIsNotReplicated(_ source: Connection) async throws {
        let row = try await source.query(
            """
            SELECT (SELECT string_agg(quote_ident(n.nspname) || '.' || quote_ident(c.relname), ', ')
                    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'u'),
                   (SELECT count(*) FROM pg_largeobject_metadata)
            """
        ).rows[0]
        if let unlogged = row[0] {
            events.warning(
                .validate,
                "unlogged tables are not replicated: copied again at cutover with \(Setting.freezeSourceAtCutover), else as of the snapshot: \(unlogged)",
                ["tables": .string(unlogged)])
        }
        if let count = Int(row[1] ?? "0"), count > 0 {
            events.warning(
                .validate,
                "\(count) large object(s) are not replicated: copied again at cutover with \(Setting.freezeSourceAtCutover), else as of the snapshot",
                ["large_objects": .int(count)])
        }
        events.info(.validate, "schema changes (DDL) are not replicated: do not change the schema until cutover")
    }
}
