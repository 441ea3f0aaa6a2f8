import PostgresClient

/// The subscription on the target: PostgreSQL's own apply worker pulling
/// from our slot. We create it attached to the existing slot, without an
/// initial copy (the dump already holds the snapshot's data).
struct Subscription {
    var name: String
    var slotName: String
    var publication: String
    /// The run that creates it (its mark), or that looks for what it created.
    var runID: String?

    /// Creates and enables it. `source` is what the target's apply worker connects with, secrets
    /// included: they are stored in `pg_subscription` (readable by superusers and pg_read_all_data)
    /// and nowhere else (see ``SecretKeepingStatement``).
    func create(on target: Connection, connectingTo source: ConnectionString, events: EventEmitter) async throws {
        guard let runID else { preconditionFailure("a subscription is created by a run") }
        // streaming = on: large transactions are applied as they arrive instead of spilled to disk
        // on the source first. binary stays off: it breaks when a type differs between versions.
        let template = """
            CREATE SUBSCRIPTION \(SQL.identifier(name)) CONNECTION \(SecretKeepingStatement.conninfo) PUBLICATION \(SQL.identifier(publication))
            WITH (create_slot = false, slot_name = \(SQL.literal(slotName)), copy_data = false, enabled = true, streaming = on)
            """
        do {
            // In one transaction: the subscription never exists without the mark that tells cleanup
            // and cutover it is this run's (with create_slot = false it may run in one).
            try await SecretKeepingStatement(template: template, conninfo: source).run(on: target, events: events, stage: .streamApply) {
                try await target.execute(
                    "COMMENT ON SUBSCRIPTION \(SQL.identifier(name)) IS \(SQL.literal(OwnershipMark.text(runID: runID)))")
            }
        } catch let error as PostgresError {
            throw MigrationError(
                .streamApply, "cannot create the subscription \(SQL.identifier(name)) on the target: \(source.scrub(error.description))",
                fix: "the target role must be a superuser (PostgreSQL 15 and older) or a member of pg_create_subscription (16+), "
                    + "and the target server must reach the source with \(Setting.subscriptionSource)", underlying: error)
        }
    }

    /// Proves, before anything is created, that the target server can open the subscription's
    /// connection to the source: a subscription with `connect = true` but no slot, to a
    /// publication that does not exist (so no table is looked up), created inside a transaction
    /// that is rolled back. Throws the server's reason, scrubbed.
    static func probe(on target: Connection, connectingTo source: ConnectionString, events: EventEmitter) async throws {
        let name = "pg_dbmigrator_probe_\(UInt32.random(in: 0...UInt32.max))"
        // A route that hangs must not hold the run for minutes.
        let conninfo = source["connect_timeout"] == nil ? source.setting("connect_timeout", to: "10") : source
        let template = """
            CREATE SUBSCRIPTION \(SQL.identifier(name)) CONNECTION \(SecretKeepingStatement.conninfo) PUBLICATION \(SQL.identifier(name))
            WITH (connect = true, create_slot = false, slot_name = NONE, enabled = false, copy_data = false)
            """
        try await SecretKeepingStatement(template: template, conninfo: conninfo, raisesWarning: true)
            .run(on: target, events: events, stage: .validate, commit: false) {}
    }

    /// Whether it exists in `database` (the connection's own when nil). pg_subscription is
    /// shared by every database of the cluster, so the name alone is not enough.
    func exists(on target: Connection, inDatabase database: String? = nil) async throws -> Bool {
        try await target.scalar(
            """
            SELECT 1 FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid
            WHERE s.subname = $1 AND d.datname = coalesce($2, current_database())
            """, [name, database]) != nil
    }

    /// Who created the subscription of this name in the connection's database, by its mark; nil when
    /// there is none. (pg_subscription is shared by the cluster, but a subscription's comment is kept
    /// in its own database's pg_description: only a session there can read it.)
    func owner(on target: Connection) async throws -> OwnershipMark.Owner? {
        guard
            let row = try await target.query(
                """
                SELECT obj_description(s.oid, 'pg_subscription') FROM pg_subscription s
                WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                """, [name]
            ).rows.first
        else { return nil }
        return OwnershipMark.owner(ofObjectCommented: row[0], runID: runID)
    }

    /// Drops the subscription of `config` if its target database has one and this run
    /// (`runID`) created it, connecting as needed (that database may not exist).
    /// Returns who owns the one found (nil: none); with `dryRun`, drops nothing.
    static func remove(for config: MigrationConfig, runID: String?, dryRun: Bool = false) async throws -> OwnershipMark.Owner? {
        let settings = config.online
        let subscription = Subscription(
            name: settings.subscriptionName, slotName: settings.slotName, publication: settings.publication, runID: runID)
        let endpoint = config.targetEndpoint
        let admin = try await endpoint.connect(database: TargetDatabase.maintenanceDatabase(for: endpoint.databaseName))
        let exists = try await subscription.exists(on: admin, inDatabase: endpoint.databaseName)
        await admin.close()
        guard exists else { return nil }
        let target = try await endpoint.connect()
        let owner = try await subscription.owner(on: target)
        if owner == .thisRun && !dryRun { try await subscription.drop(on: target) }
        await target.close()
        return owner
    }

    /// What an operator runs to remove it by hand.
    var removalSQL: String {
        "ALTER SUBSCRIPTION \(SQL.identifier(name)) DISABLE; ALTER SUBSCRIPTION \(SQL.identifier(name)) SET (slot_name = NONE); "
            + "DROP SUBSCRIPTION \(SQL.identifier(name))"
    }

    func enable(on target: Connection) async throws {
        try await target.execute("ALTER SUBSCRIPTION \(SQL.identifier(name)) ENABLE")
    }

    func disable(on target: Connection) async throws {
        try await target.execute("ALTER SUBSCRIPTION \(SQL.identifier(name)) DISABLE")
    }

    /// Drops the subscription but not the slot: we drop (or keep) the slot ourselves.
    func drop(on target: Connection) async throws {
        guard try await exists(on: target) else { return }
        try await disable(on: target)
        try await target.execute("ALTER SUBSCRIPTION \(SQL.identifier(name)) SET (slot_name = NONE)")
        try await target.execute("DROP SUBSCRIPTION \(SQL.identifier(name))")
    }

    /// Detaches a kept subscription from a slot we are about to drop, so it cannot point at nothing.
    func detachSlot(on target: Connection) async throws {
        try await disable(on: target)
        try await target.execute("ALTER SUBSCRIPTION \(SQL.identifier(name)) SET (slot_name = NONE)")
    }
}

/// A statement that carries a connection string with secrets in it (`CREATE SUBSCRIPTION …
/// CONNECTION`), sent so that the secrets reach the catalog and nothing else.
///
/// The statement text we send never contains them: the connection string goes in as COPY data
/// (which no statement log, `pg_stat_activity` or `pg_stat_statements` records, unlike a bound
/// parameter, which `log_statement = all` prints) into a temporary table, and a temporary
/// PL/pgSQL function builds the statement from it on the server. An error is raised again
/// without its context, which would quote the statement, password and all, into the server log.
/// Only what records statements nested in functions can still see it:
/// `pg_stat_statements.track = all` and audit extensions (pgaudit). A superuser turns those off
/// for the transaction; anyone else is warned first.
struct SecretKeepingStatement {
    /// The statement, with ``conninfo`` where the secret goes.
    var template: String
    /// The secret's text, and what messages call it.
    var secret: String
    var secretName: String
    /// Whether the statement raises a warning in the normal course (the probe's missing publication).
    var raisesWarning = false

    /// A statement carrying a connection string and its secrets (CREATE SUBSCRIPTION).
    init(template: String, conninfo: ConnectionString, raisesWarning: Bool = false) {
        self.init(
            template: template, secret: conninfo.keywordValue(includingSecrets: true),
            secretName: "the subscription's connection string, password included", raisesWarning: raisesWarning)
    }

    init(template: String, secret: String, secretName: String, raisesWarning: Bool = false) {
        self.template = template
        self.secret = secret
        self.secretName = secretName
        self.raisesWarning = raisesWarning
    }

    /// Stands for the connection string in a template. NUL can be in no SQL text, so it cannot
    /// be mistaken for part of a name.
    static let conninfo = "\u{0}conninfo\u{0}"

    /// The template as a `format()` string: `%` doubled, the connection string's place `%L`
    /// (`format()` quotes it as a literal).
    var formatString: String {
        template.replacingOccurrences(of: "%", with: "%%").replacingOccurrences(of: Self.conninfo, with: "%L")
    }

    /// Runs it in a transaction of its own on `target`, then `more` in the same transaction;
    /// commits, or rolls back when `commit` is false or anything fails.
    func run(
        on target: Connection, events: EventEmitter, stage: Stage, commit: Bool = true, more: () async throws -> Void
    ) async throws {
        try await target.execute("BEGIN")
        do {
            try await keepOutOfLogsAndRecorders(on: target, events: events, stage: stage)
            try await target.execute(
                "CREATE TEMPORARY TABLE pg_dbmigrator_conninfo (conninfo text NOT NULL) ON COMMIT DROP")
            try await target.beginCopyIn("COPY pg_temp.pg_dbmigrator_conninfo FROM STDIN")
            try await target.writeCopyData(Array((SQL.copyTextField(secret) + "\n").utf8))
            _ = try await target.endCopyIn()
            let body = """
                DECLARE
                    message text; detail text; hint text;
                BEGIN
                    EXECUTE format(\(SQL.literal(formatString)), (SELECT conninfo FROM pg_temp.pg_dbmigrator_conninfo));
                EXCEPTION WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
                    RAISE EXCEPTION USING ERRCODE = SQLSTATE, MESSAGE = message, DETAIL = detail, HINT = hint;
                END
                """
            try await target.execute(
                "CREATE FUNCTION pg_temp.pg_dbmigrator_run() RETURNS void LANGUAGE plpgsql AS \(SQL.literal(body))")
            try await target.execute("SELECT pg_temp.pg_dbmigrator_run()")
            try await target.execute("DROP FUNCTION pg_temp.pg_dbmigrator_run()")
            try await more()
            try await target.execute(commit ? "COMMIT" : "ROLLBACK")
        } catch {
            _ = try? await target.execute("ROLLBACK")
            throw error
        }
    }

    /// Where the statement could still be seen, and what we do about it:
    /// * a warning or notice raised while it runs goes to the server log with a CONTEXT line quoting
    ///   it (errors we catch and raise again without one);
    /// * `pg_stat_statements.track = all` and pgaudit record statements run inside functions.
    /// The settings that stop them are superuser-only: set for this transaction when we may. A
    /// non-superuser is warned about the recorders before the statement runs; for a statement that
    /// ``raisesWarning``, ``Exposed`` is thrown instead when warnings reach the log.
    private func keepOutOfLogsAndRecorders(on target: Connection, events: EventEmitter, stage: Stage) async throws {
        let row = try await target.query(
            """
            SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                   current_setting('pg_stat_statements.track', true),
                   current_setting('pgaudit.log', true),
                   current_setting('log_min_messages')
            """
        ).rows[0]
        let trackingAll = row[1] == "all"
        let auditing = row[2].map { !$0.isEmpty && $0 != "none" } ?? false
        if row[0] == "t" {
            try await target.execute("SET LOCAL log_min_messages = error")
            if trackingAll { try await target.execute("SET LOCAL pg_stat_statements.track = 'top'") }
            if auditing { try await target.execute("SET LOCAL pgaudit.log = 'none'") }
            return
        }
        if raisesWarning && !["error", "log", "fatal", "panic"].contains(row[3] ?? "") { throw Exposed() }
        guard trackingAll || auditing else { return }
        let recorders = [trackingAll ? "pg_stat_statements (track = all)" : nil, auditing ? "pgaudit" : nil].compactMap { $0 }
        events.warning(
            stage,
            "the target records statements run inside functions (\(recorders.joined(separator: ", "))): \(secretName) "
                + "will be kept there; only a superuser could turn that off for this statement",
            ["recorders": .list(recorders)])
    }

    /// The statement would put its secrets in the target's server log: a warning it raises would be
    /// logged (`log_min_messages`) with the statement quoted, and only a superuser may stop that.
    struct Exposed: Error {}
}
