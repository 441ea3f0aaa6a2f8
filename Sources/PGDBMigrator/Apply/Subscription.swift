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

    /// Creates and enables it. `source` is what the target's apply worker
    /// connects with, password included (stored in `pg_subscription`, readable by superusers only).
    func create(on target: Connection, connectingTo source: ConnectionString) async throws {
        let conninfo = source.keywordValue(includingPassword: true)
        // streaming = on: large transactions are applied as they arrive instead of spilled to disk
        // on the source first. binary stays off: it breaks when a type differs between versions.
        guard let runID else { preconditionFailure("a subscription is created by a run") }
        // With create_slot = false it may run in a transaction: the subscription never exists without
        // the mark that tells cleanup and cutover it is this run's.
        let sql = """
            CREATE SUBSCRIPTION \(SQL.identifier(name))
            CONNECTION \(SQL.literal(conninfo))
            PUBLICATION \(SQL.identifier(publication))
            WITH (create_slot = false, slot_name = \(SQL.literal(slotName)), copy_data = false,
                  enabled = true, streaming = on);
            COMMENT ON SUBSCRIPTION \(SQL.identifier(name)) IS \(SQL.literal(OwnershipMark.text(runID: runID)))
            """
        // The statement carries the password: keep it out of the target's server log where
        // we may (superuser settings; ignored otherwise), and out of pg_stat_activity afterwards.
        _ = try? await target.execute("SET log_statement = 'none'; SET log_min_duration_statement = -1")
        do {
            try await target.execute(sql)
            _ = try? await target.execute("SELECT 1")
        } catch let error as PostgresError {
            throw MigrationError(
                .streamApply, "cannot create the subscription \(SQL.identifier(name)) on the target: \(source.scrub(error.description))",
                fix: "the target role must be a superuser (PostgreSQL 15 and older) or a member of pg_create_subscription (16+), "
                    + "and the target server must reach the source with --subscription-source")
        }
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
        guard let row = try await target.query(
            """
            SELECT obj_description(s.oid, 'pg_subscription') FROM pg_subscription s
            WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
            """, [name]
        ).rows.first else { return nil }
        return OwnershipMark.owner(ofObjectCommented: row[0], runID: runID)
    }

    /// Drops the subscription of `config` if its target database has one and this run
    /// (`runID`) created it, connecting as needed (that database may not exist).
    /// Returns who owns the one found (nil: none); with `dryRun`, drops nothing.
    static func remove(for config: MigrationConfig, runID: String?, dryRun: Bool = false) async throws -> OwnershipMark.Owner? {
        let settings = config.online
        let subscription = Subscription(
            name: settings.subscriptionName, slotName: settings.slotName, publication: settings.publication, runID: runID)
        let endpoint = Endpoint(role: .target, connectionString: config.target)
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
