import PostgresClient

/// The logical replication slot on the source, created with an exported
/// snapshot so the copy starts exactly where the stream does: no gap, no overlap.
///
/// The snapshot lives only as long as the replication connection that
/// created it stays open and idle, so this type keeps that connection until
/// ``releaseSnapshot()`` — after every reader (`pg_dump --snapshot`) is done.
actor ReplicationSlot {
    let name: String
    /// The exported snapshot's name, for `pg_dump --snapshot` / `SET TRANSACTION SNAPSHOT`.
    let snapshotName: String
    /// Where decoding starts: every change committed after this is streamed.
    let consistentPoint: LSN
    private var holder: Connection?

    private init(name: String, snapshotName: String, consistentPoint: LSN, holder: Connection) {
        self.name = name
        self.snapshotName = snapshotName
        self.consistentPoint = consistentPoint
        self.holder = holder
    }

    static func create(named name: String, on source: ConnectionString) async throws -> ReplicationSlot {
        let connection: Connection
        do {
            connection = try await Connection.connect(source, label: "slot", replication: true)
        } catch let error as PostgresError {
            throw MigrationError(
                .prepareSnapshot, "cannot open a replication connection to the source: \(error.message)",
                fix: "the source role needs the REPLICATION attribute, and pg_hba.conf must allow it to connect "
                    + "(a 'replication' entry is not needed for logical replication, but the database entry is)", code: .connection,
                underlying: error)
        }
        let version = await connection.serverVersion
        let command =
            version >= 150_000
            ? "CREATE_REPLICATION_SLOT \(SQL.identifier(name)) LOGICAL pgoutput (SNAPSHOT 'export')"
            : "CREATE_REPLICATION_SLOT \(SQL.identifier(name)) LOGICAL pgoutput EXPORT_SNAPSHOT"
        let result: QueryResult
        do {
            // The connection then sits idle holding the snapshot for the whole copy.
            try await connection.keepAliveWhileIdle()
            // A statement started by a cancelled task runs to completion (it is taken for cleanup):
            // an abort that came while connecting must not then wait for every writing transaction.
            try Task.checkCancellation()
            result = try await connection.execute(command)
        } catch let error as PostgresError {
            throw MigrationError(
                .prepareSnapshot, "cannot create the replication slot \(SQL.identifier(name)): \(error)", underlying: error)
        }
        guard let row = result.rows.first, let point = row[1].flatMap(LSN.init), let snapshot = row[2] else {
            throw MigrationError(.prepareSnapshot, "CREATE_REPLICATION_SLOT returned an unexpected result: \(result.columns)")
        }
        return ReplicationSlot(name: name, snapshotName: snapshot, consistentPoint: point, holder: connection)
    }

    /// Closes the replication connection; the snapshot ends, the slot stays.
    func releaseSnapshot() async {
        await holder?.close()
        holder = nil
    }

    /// What an operator needs to know about a slot before anyone drops it.
    struct Description: Sendable {
        var name: String
        var plugin: String
        var database: String
        /// The walsender reading from it, when a consumer is attached.
        var activePID: String?
        var retainedWAL: String
        var retainedBytes: Int
        var walStatus: String

        var summary: String {
            "plugin \(plugin), database \(database), "
                + (activePID.map { "in use by a consumer (walsender pid \($0))" } ?? "inactive")
                + ", holding \(retainedWAL) of WAL (status \(walStatus))"
        }
    }

    static func describe(named name: String, on source: Connection) async throws -> Description? {
        guard
            let row = try await source.query(
                """
                SELECT coalesce(plugin, 'physical'), coalesce(database, '-'), active_pid::text,
                       coalesce(pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), '0 bytes'),
                       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint::text,
                       coalesce(wal_status, 'unknown')
                FROM pg_replication_slots WHERE slot_name = $1
                """, [name]
            ).rows.first
        else { return nil }
        return Description(
            name: name, plugin: row[0] ?? "?", database: row[1] ?? "?", activePID: row[2], retainedWAL: row[3] ?? "?",
            retainedBytes: Int(row[4] ?? "0") ?? 0, walStatus: row[5] ?? "?")
    }

    /// Drops a slot on the source, waiting up to `timeout` (`--lock-timeout-secs`) for a walsender
    /// still attached to let go of it. Returns false when there was no such slot.
    /// A wait for the walsender is said every ten seconds through `events`, naming it (PID, user,
    /// application, address), and so is giving up.
    @discardableResult
    static func drop(named name: String, on source: Connection, timeout: Duration, events: EventEmitter? = nil) async throws -> Bool {
        let started = ContinuousClock.now
        let deadline = started + timeout
        var lastReport = started
        while true {
            let slots = try await source.query("SELECT active_pid::text FROM pg_replication_slots WHERE slot_name = $1", [name])
            guard let slot = slots.rows.first else { return false }  // already gone
            let active = slot[0]
            if active == nil {
                do {
                    try await source.query("SELECT pg_drop_replication_slot($1)", [name])
                    return true
                } catch let error as PostgresError where error.sqlState == "55006" {
                    // became active again between the check and the drop: retry
                }
            }
            let reporting = ContinuousClock.now - lastReport >= .seconds(10)
            if let active, reporting || ContinuousClock.now > deadline {
                let described = try await source.query(LockWait.sessionsSQL, ["{\(active)}"]).rows.first
                let holder = described.map(LockWait.describe) ?? "walsender pid \(active)"
                guard ContinuousClock.now <= deadline else {
                    throw MigrationError(
                        events?.currentPhase ?? .cutover,
                        "gave up after \(Int((ContinuousClock.now - started).seconds)) s waiting for the replication slot "
                            + "\(SQL.identifier(name)) to be released, held by \(holder)",
                        fix: "drop it when it is released: SELECT pg_drop_replication_slot(\(SQL.literal(name))); "
                            + "or raise \(Setting.lockTimeout)", code: .lockTimeout)
                }
                lastReport = ContinuousClock.now
                events?.warning(
                    events?.currentPhase ?? .cutover,
                    "waiting \(Int((lastReport - started).seconds)) s for the replication slot \(SQL.identifier(name)) to be released "
                        + "before dropping it, held by \(holder)", ["slot": .string(name), "active_pid": .string(active)])
            }
            try await Task.sleep(for: .milliseconds(20))  // the cutover's teardown waits on this: writes may be held
        }
    }
}
