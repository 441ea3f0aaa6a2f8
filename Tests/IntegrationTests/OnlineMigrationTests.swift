import Foundation
import PGDBMigrator
import PostgresClient
import Testing

/// Online migrations between two real servers while an application keeps writing.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct OnlineMigrationTests {
    /// Fast heartbeats so tests do not wait on the defaults.
    static func config(source: String, target: String, _ adjust: (inout MigrationConfig) -> Void = { _ in }) async throws -> MigrationConfig
    {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        let suffix = SharedClusters.uniqueName("t")
        var config = MigrationConfig(
            mode: .online, source: try sourceCluster.connectionString(database: source),
            target: try targetCluster.connectionString(database: target), jobs: 2)
        config.online = OnlineSettings(
            slotName: "slot_\(suffix)", publication: "pub_\(suffix)", subscriptionName: "sub_\(suffix)",
            pollInterval: .milliseconds(500), fastPollInterval: .milliseconds(100), cutoverTimeout: .seconds(120))
        adjust(&config)
        return config
    }

    /// Runs `config` in the background and returns once the target is streaming, or once the run ended
    /// (awaiting the returned task then gives its error).
    static func startStreaming(_ config: MigrationConfig, events: EventLog) async throws -> (Migrator, Task<MigrationOutcome, Error>) {
        let migrator = Migrator(config: config, onEvent: events.record)
        let ended = Flag()
        let run = Task {
            defer { ended.set() }
            return try await migrator.run()
        }
        let deadline = Date().addingTimeInterval(120)
        while !events.all.contains(where: { $0.kind == .streaming }) && !ended.isSet {
            if Date() > deadline { throw TestSupportError("the migration never started streaming: \(events.all.map(\.message))") }
            try await Task.sleep(for: .milliseconds(50))
        }
        return (migrator, run)
    }

    static func replicationObjects(_ config: MigrationConfig) async throws -> (slot: Bool, publication: Bool, subscription: String?) {
        let (source, target) = try await SharedClusters.get()
        let sourceConnection = try await source.connect()
        let slot =
            try await sourceConnection.scalar("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", [config.online.slotName]) != nil
        let publicationConnection = try await source.connect(database: config.source.resolvedDatabase!)
        let publication =
            try await publicationConnection.scalar("SELECT 1 FROM pg_publication WHERE pubname = $1", [config.online.publication]) != nil
        let targetConnection = try await target.connect()
        let subscription = try await targetConnection.scalar(
            "SELECT subenabled::text FROM pg_subscription WHERE subname = $1", [config.online.subscriptionName])
        return (slot, publication, subscription)
    }

    /// Removes what a test's online run left, through `--mode cleanup` (itself tested in OnlineAbortTests).
    static func removeReplicationObjects(_ config: MigrationConfig) async throws {
        var cleanup = config
        cleanup.mode = .cleanup
        _ = try await Migrator(config: cleanup).run()
        let objects = try await replicationObjects(config)
        #expect(!objects.slot && objects.subscription == nil)
    }

    @Test(
        "writes during the copy and streaming; cutover requested as soon as writes stop: nothing lost",
        arguments: MigrationConfig.CopyMethod.allCases)
    func cutoverLosesNothing(copyMethod: MigrationConfig.CopyMethod) async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await OfflineMigrationTests.sampleSource()
        let targetDatabase = SharedClusters.uniqueName("online_copy")
        // A publication of the user's, for a downstream subscriber: it travels; the migration's own does not.
        let sourceAdmin = try await source.connect(database: sourceDatabase)
        try await sourceAdmin.execute("CREATE PUBLICATION downstream FOR TABLE public.documents")
        let workload = WriteWorkload()
        try await workload.start(source, database: sourceDatabase)  // running before the slot exists

        let config = try await Self.config(source: sourceDatabase, target: targetDatabase) { $0.copyMethod = copyMethod }
        let events = EventLog()
        let (migrator, run) = try await Self.startStreaming(config, events: events)
        // CREATE SUBSCRIPTION carried the password; it must not linger in the target's pg_stat_activity.
        let targetAdmin = try await target.connect()
        let lingering = try await targetAdmin.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND strpos(query, $1) > 0", [TestCluster.superuserPassword]
        )
        #expect(lingering == "0")
        try await Task.sleep(for: .seconds(1.5))  // keep writing while streaming
        let committed = await workload.stop()
        migrator.cutoverHandle.request()  // immediately, without waiting for CaughtUp
        let outcome = try await run.value

        #expect(committed > 10, "workload committed \(committed); error: \(workload.lastError ?? "none")")
        #expect(outcome.cutoverTriggered)
        #expect(outcome.barrierLSN != nil)
        #expect(outcome.sequenceFailures.isEmpty)
        let expected = try await Fingerprint.of(source, database: sourceDatabase, materializedViews: false)
        let actual = try await Fingerprint.of(target, database: targetDatabase, materializedViews: false)
        #expect(actual == expected, "\(actual.differences(from: expected))")
        let publications = try await target.connect(database: targetDatabase).query(
            "SELECT p.pubname || ':' || string_agg(t.schemaname || '.' || t.tablename, ',') FROM pg_publication p "
                + "LEFT JOIN pg_publication_tables t ON t.pubname = p.pubname GROUP BY p.pubname ORDER BY 1")
        #expect(publications.rows.map { $0[0] ?? "" } == ["downstream:public.documents"], "the user's publication only")

        // The phases, in order, each reported.
        // Heartbeats, and ANALYZE running beside the stream, are not phases.
        let phases = events.stages.filter { ![.lag, .caughtUp, .fellBehind, .analyze].contains($0) }
            .reduce(into: [Stage]()) { if $0.last != $1 { $0.append($1) } }
        #expect(phases == [.validate, .prepareSnapshot, .dump, .restore, .streamApply, .cutover, .complete])
        let lag = events.all.first { $0.stage == .lag }
        #expect(lag?.detail["lag_bytes"] != nil && lag?.detail["received_lsn"] != nil && lag?.detail["applied_lsn"] != nil)

        // Lifecycle: everything we created is gone.
        let objects = try await Self.replicationObjects(config)
        #expect(!objects.slot && !objects.publication && objects.subscription == nil)

        // Sequences were synced: new rows on the target do not collide.
        let targetConnection = try await target.connect(database: targetDatabase)
        try await targetConnection.execute(
            """
            INSERT INTO public.customers (email, name, signup_date) VALUES ('after@example.com', 'After', '2025-01-01');
            INSERT INTO sales.orders (customer_id, total, ordered_at) VALUES ((SELECT min(id) FROM public.customers), 1, '2025-01-01');
            """)
    }

    @Test("--freeze-source-at-cutover while writes run: target equal, source refuses writes, existing publication and kept objects stay")
    func freezeWithKeepFlags() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await OfflineMigrationTests.sampleSource()
        let targetDatabase = SharedClusters.uniqueName("frozen_copy")
        let config = try await Self.config(source: sourceDatabase, target: targetDatabase) {
            $0.online.freezeSourceAtCutover = true
            $0.online.keepSlot = true
            $0.online.keepSubscription = true
        }
        let setup = try await source.connect(database: sourceDatabase)
        try await setup.execute("CREATE PUBLICATION \(SQL.identifier(config.online.publication)) FOR ALL TABLES")

        let workload = WriteWorkload()
        try await workload.start(source, database: sourceDatabase)
        let events = EventLog()
        let (migrator, run) = try await Self.startStreaming(config, events: events)
        try await Task.sleep(for: .seconds(1))
        migrator.cutoverHandle.request()  // writes still running
        let outcome = try await run.value
        let committed = await workload.stop()

        #expect(outcome.cutoverTriggered)
        #expect(committed > 5)
        #expect(workload.lastError != nil, "the freeze should have stopped the workload")
        let expected = try await Fingerprint.of(source, database: sourceDatabase, materializedViews: false)
        let actual = try await Fingerprint.of(target, database: targetDatabase, materializedViews: false)
        #expect(actual == expected, "\(actual.differences(from: expected))")

        // The source refuses new writes, and the Complete event says how to undo that.
        let fresh = try await source.connect(database: sourceDatabase)
        let refused = await #expect(throws: PostgresError.self) {
            try await fresh.execute("INSERT INTO public.documents (id, title) VALUES (999, 'late')")
        }
        #expect(refused?.sqlState == "25006")
        #expect(events.all.last?.detail["undo_freeze"] != nil)
        // A session that lifts the read-only default for itself is stopped by the triggers, whatever it sets.
        let walker = try await source.connect(database: sourceDatabase)
        try await walker.execute("SET default_transaction_read_only = off; SET session_replication_role = replica")
        for write in [
            "INSERT INTO public.documents (id, title) VALUES (998, 'around')", "UPDATE public.documents SET title = 'x'",
            "DELETE FROM public.documents", "TRUNCATE public.documents CASCADE",
        ] {
            let walkedAround = await #expect(throws: PostgresError.self) { try await walker.execute(write) }
            #expect(
                walkedAround?.sqlState == "25006" && walkedAround?.message.contains("frozen for a migration cutover") == true,
                "\(write): \(walkedAround?.message ?? "")")
        }

        let objects = try await Self.replicationObjects(config)
        #expect(objects.publication, "a publication that existed before must never be dropped")
        #expect(objects.slot)
        #expect(objects.subscription == "false")

        // Clean up what the keep flags kept.
        let admin = try await source.connect()
        // The undo the Complete event gives works from a session on the frozen database itself.
        let frozen = try await source.connect(database: sourceDatabase)
        for statement in (events.all.last?.detail["undo_freeze"]?.description ?? "").split(separator: ";") {
            try await frozen.execute(String(statement))
        }
        try await fresh.execute("SELECT 1")  // (fresh is still read-only: the setting applies to new sessions)
        let writable = try await source.connect(database: sourceDatabase)
        try await writable.execute("INSERT INTO public.documents (id, title) VALUES (999, 'after undo')")
        // Kept on purpose, they are no run's any more: named at Complete, and removed only by the explicit flag.
        let kept = events.all.last?.detail["kept"]?.description ?? ""
        #expect(kept.contains(config.online.slotName) && kept.contains(config.online.subscriptionName), "\(kept)")
        var cleanup = config
        cleanup.mode = .cleanup
        _ = try await Migrator(config: cleanup).run()
        #expect(try await Self.replicationObjects(config).slot, "a kept slot is not dropped without --drop-foreign-slot")
        let deadline = Date().addingTimeInterval(30)
        while try await admin.scalar("SELECT active::text FROM pg_replication_slots WHERE slot_name = $1", [config.online.slotName])
            == "true",
            Date() < deadline
        {
            try await Task.sleep(for: .milliseconds(100))
        }
        cleanup.online.dropForeignSlot = config.online.slotName
        _ = try await Migrator(config: cleanup).run()
        let left = try await Self.replicationObjects(config)
        #expect(!left.slot && left.subscription == "false")
        let targetSession = try await target.connect(database: targetDatabase)
        try await targetSession.execute("ALTER SUBSCRIPTION \(SQL.identifier(config.online.subscriptionName)) SET (slot_name = NONE)")
        try await targetSession.execute("DROP SUBSCRIPTION \(SQL.identifier(config.online.subscriptionName))")
        #expect(try await OnlineAbortTests.publicationExists(config, source), "cleanup keeps a publication that existed before")
    }

    @Test("an apply worker that keeps failing ends the run with the server's error, leaving everything in place")
    func applyFailure() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await OnlinePreflightTests.smallSource()
        let targetDatabase = SharedClusters.uniqueName("conflict")
        let config = try await Self.config(source: sourceDatabase, target: targetDatabase) {
            $0.online.applyFailureGrace = .seconds(8)
        }
        let events = EventLog()
        let (_, run) = try await Self.startStreaming(config, events: events)
        let targetConnection = try await target.connect(database: targetDatabase)
        for _ in 0..<200 {  // until the apply worker runs
            let running = try await targetConnection.scalar(
                "SELECT count(*) FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL", [config.online.subscriptionName])
            if running == "1" { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        // A row on the target that the source will insert too: the apply worker hits a duplicate key.
        try await targetConnection.execute("INSERT INTO items VALUES (5000, 'target only')")
        let sourceConnection = try await source.connect(database: sourceDatabase)
        try await sourceConnection.execute("INSERT INTO items VALUES (5000, 'from source')")

        let error = await #expect(throws: MigrationError.self) { try await run.value }
        #expect(error?.stage == .streamApply)
        #expect(error?.message.contains("duplicate key") == true, "\(error?.message ?? "")")
        #expect(error?.fix?.contains("ENABLE") == true)
        let objects = try await Self.replicationObjects(config)
        #expect(objects.slot && objects.subscription == "false")

        try await Self.removeReplicationObjects(config)
    }

    @Test("a cutover that cannot reach the barrier in --cutover-timeout-secs gives up and drops nothing")
    func cutoverTimeout() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await OnlinePreflightTests.smallSource()
        let targetDatabase = SharedClusters.uniqueName("timeout")
        let config = try await Self.config(source: sourceDatabase, target: targetDatabase) {
            $0.online.cutoverTimeout = .seconds(3)
        }
        let (migrator, run) = try await Self.startStreaming(config, events: EventLog())
        let targetLock = try await target.connect(database: targetDatabase)
        try await targetLock.execute("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE")  // the apply worker waits
        let writer = try await source.connect(database: sourceDatabase)
        try await writer.execute("UPDATE items SET v = 'held back' WHERE id = 1")
        migrator.cutoverHandle.request()
        let error = await #expect(throws: MigrationError.self) { try await run.value }
        try await targetLock.execute("ROLLBACK")
        #expect(error?.stage == .cutover)
        #expect(error?.message.contains("did not apply up to the barrier") == true, "\(error?.message ?? "")")
        #expect(error?.fix?.contains("nothing was dropped") == true)
        let objects = try await Self.replicationObjects(config)
        #expect(objects.slot && objects.publication && objects.subscription == "false")

        try await Self.removeReplicationObjects(config)
    }

    @Test(
        "a quiet heartbeat: once caught up, at most one Lag event per poll interval; a minute's steady trickle never flaps; lag in seconds")
    func quietHeartbeat() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let targetDatabase = SharedClusters.uniqueName("quiet")
        let config = try await Self.config(source: database, target: targetDatabase)  // polls every 500 ms, 100 ms once caught up
        let events = EventLog()
        let (migrator, run) = try await Self.startStreaming(config, events: events)
        let deadline = Date().addingTimeInterval(60)
        while !events.stages.contains(.caughtUp) && Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        let caughtUpAt = events.all.count
        let writer = try await source.connect(database: database)
        let started = Date()
        for i in 0..<550 {  // a steady trickle for a minute, then idle
            try await writer.execute("UPDATE items SET v = 'trickle \(i)' WHERE id = \(i % 100 + 1)")
            try await Task.sleep(for: .milliseconds(100))
        }
        try await Task.sleep(for: .seconds(2))
        let seconds = Date().timeIntervalSince(started)
        let after = Array(events.all.dropFirst(caughtUpAt))
        let lagEvents = after.filter { $0.stage == .lag }
        #expect(!after.contains { $0.stage == .fellBehind }, "\(after.map(\.message))")
        #expect(
            Double(lagEvents.count) <= seconds / 0.5 + 2, "\(lagEvents.count) Lag events in \(seconds) s, fast-polled every 100 ms")
        #expect(events.all.contains { $0.stage == .lag && $0.detail["lag_seconds"] != nil }, "lag is measured in seconds too")
        migrator.cutoverHandle.request()
        _ = try await run.value
        #expect(try await Fingerprint.of(target, database: targetDatabase) == Fingerprint.of(source, database: database))
    }

    @Test("a sequence that cannot be synced is reported by name, the cutover completes, and the CLI exits 1")
    func sequenceSyncFailure() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await OfflineMigrationTests.sampleSource()
        let targetDatabase = SharedClusters.uniqueName("seqfail")
        let names = OnlineAbortTests.Names()
        let running = try CLI.start(try await OnlineAbortTests.arguments(sourceDatabase, targetDatabase, names))
        #expect(await running.waitForStderr("stage=CaughtUp"))
        let targetConnection = try await target.connect(database: targetDatabase)
        try await targetConnection.execute("DROP SEQUENCE inventory.unused_seq")
        running.signal(SIGINT)
        let result = try await running.wait(timeout: 60)
        #expect(result.status == 1, "\(result.stderr)")
        #expect(result.stderr.contains("could not sync sequence inventory.unused_seq"))
        #expect(result.stderr.contains("WARNING stage=Complete cutover done"), "\(result.stderr)")
        #expect(!result.stderr.contains("migration complete"), "a sequence left behind is not a complete migration")
        #expect(result.stderr.contains("1 sequence(s) could not be synced: inventory.unused_seq"))
        let expected = try await Fingerprint.of(source, database: sourceDatabase, materializedViews: false)
        var actual = try await Fingerprint.of(target, database: targetDatabase, materializedViews: false)
        actual.sequences["inventory.unused_seq"] = expected.sequences["inventory.unused_seq"]
        #expect(actual == expected, "\(actual.differences(from: expected))")
    }

    @Test("the WAL the slot holds is watched from its creation: past --max-retained-wal-mb a warning fires")
    func retainedWALWarning() async throws {
        let sourceDatabase = try await OnlinePreflightTests.smallSource()
        let config = try await Self.config(source: sourceDatabase, target: SharedClusters.uniqueName("retained")) {
            $0.online.maxRetainedWALBytes = 1
        }
        let events = EventLog()
        let (migrator, run) = try await Self.startStreaming(config, events: events)
        let deadline = Date().addingTimeInterval(30)
        while !events.all.contains(where: { $0.detail["retained_wal_bytes"] != nil }) && Date() < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        migrator.cutoverHandle.request()
        _ = try await run.value
        let warning = events.all.first { $0.level == .warning && $0.message.contains("of WAL on the source") }
        #expect(warning != nil)
        if case .int(let bytes)? = warning?.detail["retained_wal_bytes"] {
            #expect(bytes > 1)
        } else {
            Issue.record("no retained_wal_bytes")
        }
        #expect(warning?.detail["wal_status"] != nil)
    }

    @Test("a slot the source invalidates (max_slot_wal_keep_size) ends the run with a clear error and the way forward")
    func slotInvalidated() async throws {
        let source = try await TestCluster.start(name: "invalidate-source", settings: ["max_slot_wal_keep_size": "1MB"])
        let target = try await TestCluster.start(name: "invalidate-target")
        defer {
            source.stop()
            target.stop()
        }
        let database = try await source.createDatabase("app")
        let setup = try await source.connect(database: database)
        try await setup.execute(
            "CREATE TABLE t (id serial PRIMARY KEY, v text); INSERT INTO t (v) SELECT 'row' FROM generate_series(1, 100)")
        var config = MigrationConfig(
            mode: .online, source: try source.connectionString(database: database),
            target: try target.connectionString(database: database), jobs: 1)
        config.online.pollInterval = .milliseconds(200)
        config.online.applyFailureGrace = .seconds(120)  // the subscription is disabled on purpose below
        config.stateDirectory = NSTemporaryDirectory() + "pgdm-state-\(UUID().uuidString)"
        let events = EventLog()
        let run = Task { try await Migrator(config: config, onEvent: events.record).run() }
        while !events.all.contains(where: { $0.kind == .streaming }) { try await Task.sleep(for: .milliseconds(50)) }

        // The slot stops advancing while the source writes more WAL than it may keep.
        let targetAdmin = try await target.connect(database: database)
        try await targetAdmin.execute("ALTER SUBSCRIPTION \(SQL.identifier(config.online.subscriptionName)) DISABLE")
        for _ in 0..<4 {
            try await setup.execute("INSERT INTO t (v) SELECT repeat('x', 1000) FROM generate_series(1, 500)")
            _ = try await setup.scalar("SELECT pg_switch_wal()::text")
        }
        try await setup.execute("CHECKPOINT")
        #expect(try await setup.scalar("SELECT wal_status FROM pg_replication_slots") == "lost")

        let started = Date()
        do {
            _ = try await run.value
            Issue.record("the run went on with a lost slot")
        } catch let error as MigrationError {
            // The slot guard or the heartbeat, whichever reads the slot first: both say it is lost and what to do.
            #expect(
                error.message.contains("invalidated replication slot") || error.message.contains("was invalidated (wal_status lost)"),
                "\(error)")
            #expect(error.fix?.contains("\(MigrationConfig.Setting.mode) cleanup") == true, "\(error)")
        }
        #expect(Date().timeIntervalSince(started) < 30)
    }

    /// An online run of the sample database between servers of the test's own (it restarts them),
    /// with fast heartbeats, returned once streaming. The caller stops the servers.
    static func streamingOnOwnServers(_ name: String, events: EventLog) async throws
        -> (source: TestCluster, target: TestCluster, database: String, migrator: Migrator, run: Task<MigrationOutcome, Error>)
    {
        let source = try await TestCluster.start(name: "\(name)-source")
        let target = try await TestCluster.start(name: "\(name)-target")
        let database = try await source.createDatabase("app")
        try await source.load(file: sampleSQLPath, into: database)
        var config = MigrationConfig(
            mode: .online, source: try source.connectionString(database: database),
            target: try target.connectionString(database: database), jobs: 2)
        config.online.pollInterval = .milliseconds(300)
        config.online.fastPollInterval = .milliseconds(100)
        config.online.cutoverTimeout = .seconds(120)
        let (migrator, run) = try await startStreaming(config, events: events)
        return (source, target, database, migrator, run)
    }

    /// Source and target hold the same rows, by checksum.
    static func expectSameContent(_ source: TestCluster, _ target: TestCluster, database: String) async throws {
        let expected = try await Fingerprint.of(source, database: database, materializedViews: false)
        let actual = try await Fingerprint.of(target, database: database, materializedViews: false)
        #expect(actual == expected, "\(actual.differences(from: expected))")
    }

    @Test("the target and then the source restart while streaming: the run carries on and cutover loses nothing")
    func serversRestart() async throws {
        let events = EventLog()
        let (source, target, database, migrator, run) = try await Self.streamingOnOwnServers("restart", events: events)
        defer {
            source.stop()
            target.stop()
        }
        func write(_ i: Int) async throws {
            let connection = try await source.connect(database: database)
            try await connection.execute(WriteWorkload.transaction(i))
            await connection.close()
        }
        try await write(1)
        try await target.restart()
        try await write(2)
        try await Task.sleep(for: .seconds(1))
        try await source.restart()
        try await write(3)
        try await Task.sleep(for: .seconds(1))
        migrator.cutoverHandle.request()
        let outcome = try await run.value
        #expect(outcome.cutoverTriggered)
        #expect(events.all.contains { $0.message.contains("reconnecting") })
        try await Self.expectSameContent(source, target, database: database)
    }

    @Test("the source restarts while the cutover waits for the barrier: the cutover carries on with fresh sessions and loses nothing")
    func sourceRestartsDuringBarrierWait() async throws {
        let events = EventLog()
        let (source, target, database, migrator, run) = try await Self.streamingOnOwnServers("barrier", events: events)
        defer {
            source.stop()
            target.stop()
        }

        // The apply worker waits behind this lock, so the cutover's wait for the barrier is certain to last.
        let holder = try await target.connect(database: database)
        try await holder.execute("BEGIN; LOCK TABLE sales.orders IN ACCESS EXCLUSIVE MODE")
        let writer = try await source.connect(database: database)
        try await writer.execute(WriteWorkload.transaction(1))
        await writer.close()
        migrator.cutoverHandle.request()
        let deadline = Date().addingTimeInterval(60)
        while !events.all.contains(where: { $0.message.contains("bytes left to apply before the barrier") }) {
            if Date() > deadline { throw TestSupportError("the cutover never waited for the barrier: \(events.all.map(\.message))") }
            try await Task.sleep(for: .milliseconds(50))
        }
        // Immediate mode: a fast shutdown would wait for the blocked apply worker to confirm (PostgreSQL
        // before 17). The walwriter has long written the commits (synchronous_commit = off here).
        try await Task.sleep(for: .seconds(1))
        try await source.crashAndRestart()
        // The control sessions are replaced while the barrier is still out of reach.
        while !events.all.contains(where: { $0.message.contains("reconnected") }) {
            if Date() > deadline { throw TestSupportError("never reconnected: \(events.all.map(\.message))") }
            try await Task.sleep(for: .milliseconds(50))
        }
        try await holder.execute("ROLLBACK")
        await holder.close()

        let outcome = try await run.value
        #expect(outcome.cutoverTriggered)
        #expect(events.all.contains { $0.message.contains("target applied past the barrier") })
        try await Self.expectSameContent(source, target, database: database)
    }
}
