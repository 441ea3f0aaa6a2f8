import Foundation
import PGDBMigrator
import PostgresClient
import Testing

/// Aborts of an online run through the CLI: what is left behind is enough to lose nothing.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct OnlineAbortTests {
    struct Names {
        let suffix = SharedClusters.uniqueName("abort")
        var slot: String { "slot_\(suffix)" }
        var publication: String { "pub_\(suffix)" }
        var subscription: String { "sub_\(suffix)" }
    }

    static func arguments(_ source: String, _ target: String, _ names: Names, on servers: (TestCluster, TestCluster)? = nil)
        async throws -> [String]
    {
        let shared = try await SharedClusters.get()
        let (sourceCluster, targetCluster) = servers ?? shared
        return [
            "--mode", "online", "--source", sourceCluster.url(database: source), "--target", targetCluster.url(database: target),
            "--slot-name", names.slot, "--publication", names.publication, "--subscription-name", names.subscription,
            "--cutover-poll-secs", "0.5", "--cutover-fast-poll-ms", "100", "--jobs", "2",
        ]
    }

    /// Re-enables a subscription left by an abort and waits until the target equals the source.
    static func resumeAndCompare(_ names: Names, source sourceDatabase: String, target targetDatabase: String) async throws {
        let (source, target) = try await SharedClusters.get()
        let targetConnection = try await target.connect(database: targetDatabase)
        #expect(
            try await targetConnection.scalar("SELECT subenabled::text FROM pg_subscription WHERE subname = $1", [names.subscription])
                == "false")
        try await targetConnection.execute("ALTER SUBSCRIPTION \(SQL.identifier(names.subscription)) ENABLE")
        // Tables only: sequences are synced at cutover, which an aborted run never reached.
        func tables(_ cluster: TestCluster, _ database: String) async throws -> Fingerprint {
            var fingerprint = try await Fingerprint.of(cluster, database: database, materializedViews: false)
            fingerprint.sequences = [:]
            return fingerprint
        }
        var expected = try await tables(source, sourceDatabase)
        var actual = try await tables(target, targetDatabase)
        let deadline = Date().addingTimeInterval(60)
        while actual != expected && Date() < deadline {
            try await Task.sleep(for: .milliseconds(250))
            expected = try await tables(source, sourceDatabase)
            actual = try await tables(target, targetDatabase)
        }
        #expect(actual == expected, "\(actual.differences(from: expected))")
        try await targetConnection.execute(
            "ALTER SUBSCRIPTION \(SQL.identifier(names.subscription)) DISABLE; ALTER SUBSCRIPTION \(SQL.identifier(names.subscription)) SET (slot_name = NONE); DROP SUBSCRIPTION \(SQL.identifier(names.subscription))"
        )
        let admin = try await source.connect()
        try await admin.query("SELECT pg_drop_replication_slot($1)", [names.slot])
    }

    @Test("Ctrl+C while the slot waits for a writing transaction aborts at once, never a cutover")
    func interruptWhileCreatingSlot() async throws {
        let (source, _) = try await SharedClusters.get()
        let sourceDatabase = try await OnlinePreflightTests.smallSource()
        let names = Names()
        // A transaction that has written holds up CREATE_REPLICATION_SLOT until it ends.
        let writer = try await source.connect(database: sourceDatabase)
        try await writer.execute("BEGIN; INSERT INTO items VALUES (1000, 'open')")
        let running = try CLI.start(try await Self.arguments(sourceDatabase, SharedClusters.uniqueName("never"), names))
        #expect(await running.waitForStderr("this waits for transactions already writing"))
        try await Task.sleep(for: .milliseconds(300))
        running.signal(SIGINT)
        let result = try await running.wait(timeout: 20)
        try await writer.execute("ROLLBACK")

        #expect(result.status == 130, "\(result.stderr)")
        #expect(result.stderr.contains("aborted by SIGINT during PrepareSnapshot"))
        #expect(!result.stderr.contains("stage=Cutover"))
        #expect(result.stderr.contains("DROP PUBLICATION \"\(names.publication)\""))
        #expect(try await writer.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", [names.slot]) == "0")
        try await writer.execute("DROP PUBLICATION \(SQL.identifier(names.publication))")
    }

    @Test("Ctrl+C during the dump aborts (never a cutover), stops pg_dump and says what it left")
    func interruptDuringDump() async throws {
        let (source, _) = try await SharedClusters.get()
        // Big enough that pg_dump runs for a while.
        let sourceDatabase = try await OnlinePreflightTests.smallSource("CREATE TABLE big (id int PRIMARY KEY, pad text);")
        try await source.connect(database: sourceDatabase).fill("big", rows: 600_000, select: "g, repeat('x', 300)")
        let names = Names()
        let running = try CLI.start(try await Self.arguments(sourceDatabase, SharedClusters.uniqueName("never"), names))
        #expect(await running.waitForStderr("stage=Dump"))
        running.signal(SIGINT)
        let result = try await running.wait(timeout: 30)

        #expect(result.status == 130, "\(result.stderr)")
        #expect(result.stderr.contains("aborted by SIGINT during Dump"))
        #expect(!result.stderr.contains("stage=Cutover"))
        #expect(!result.stderr.contains("dump finished"), "the dump should have been interrupted")
        #expect(result.stderr.contains("pg_drop_replication_slot('\(names.slot)')"))
        let admin = try await source.connect(database: sourceDatabase)
        #expect(try await admin.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", [names.slot]) == "1")
        try await admin.query("SELECT pg_drop_replication_slot($1)", [names.slot])
        try await admin.execute("DROP PUBLICATION \(SQL.identifier(names.publication))")
    }

    @Test("SIGTERM while streaming leaves slot and subscription (disabled); re-enabling catches up with nothing lost")
    func terminateWhileStreaming() async throws {
        let (source, _) = try await SharedClusters.get()
        let sourceDatabase = try await OfflineMigrationTests.sampleSource()
        let targetDatabase = SharedClusters.uniqueName("terminated")
        let names = Names()
        let workload = WriteWorkload()
        try await workload.start(source, database: sourceDatabase)
        let running = try CLI.start(try await Self.arguments(sourceDatabase, targetDatabase, names))
        #expect(await running.waitForStderr("stage=Lag"))
        running.signal(SIGTERM)
        let result = try await running.wait(timeout: 30)
        try await Task.sleep(for: .milliseconds(500))  // writes go on after the abort
        await workload.stop()

        #expect(result.status == 143, "\(result.stderr)")
        #expect(result.stderr.contains("left in place"))
        #expect(result.stderr.contains("ALTER SUBSCRIPTION \"\(names.subscription)\" ENABLE"))
        try await Self.resumeAndCompare(names, source: sourceDatabase, target: targetDatabase)
        let admin = try await source.connect(database: sourceDatabase)
        try await admin.execute("DROP PUBLICATION \(SQL.identifier(names.publication))")
    }

    @Test("a second Ctrl+C during a stuck cutover aborts it; nothing is dropped and nothing lost")
    func secondInterruptDuringCutover() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await OfflineMigrationTests.sampleSource()
        let targetDatabase = SharedClusters.uniqueName("stuck")
        let names = Names()
        let running = try CLI.start(try await Self.arguments(sourceDatabase, targetDatabase, names))
        #expect(await running.waitForStderr("stage=CaughtUp"))

        // Hold the apply worker back: it cannot write the table while we lock it on the target.
        let targetLock = try await target.connect(database: targetDatabase)
        try await targetLock.execute("BEGIN; LOCK TABLE public.documents IN ACCESS EXCLUSIVE MODE")
        let writer = try await source.connect(database: sourceDatabase)
        try await writer.execute("UPDATE public.documents SET title = 'while stuck'")

        running.signal(SIGINT)
        #expect(await running.waitForStderr("waiting for the target to apply up to barrier"))
        try await Task.sleep(for: .milliseconds(500))
        running.signal(SIGINT)
        let result = try await running.wait(timeout: 30)
        try await targetLock.execute("ROLLBACK")

        #expect(result.status == 130, "\(result.stderr)")
        #expect(result.stderr.contains("cutover requested"))
        #expect(result.stderr.contains("aborted by SIGINT during Cutover"))
        #expect(!result.stderr.contains("stage=Complete"))
        try await Self.resumeAndCompare(names, source: sourceDatabase, target: targetDatabase)
        try await writer.execute("DROP PUBLICATION \(SQL.identifier(names.publication))")
    }

    @Test("the example program runs an online migration and cuts over on Ctrl+C")
    func exampleProgram() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await OnlinePreflightTests.smallSource()
        let targetDatabase = SharedClusters.uniqueName("example_copy")
        let running = try CLI.start(
            [source.url(database: sourceDatabase), target.url(database: targetDatabase)], program: "online_migration")
        // The example keeps the library's default 5 s heartbeat. Under a loaded shared source the slot's snapshot
        // can take a while (it waits for other tests' writing transactions, seen at 15 s intervals).
        let deadline = Date().addingTimeInterval(180)
        while Date() < deadline, !(try await running.stdoutSoFar()).contains("CaughtUp:"), running.isRunning {
            try await Task.sleep(for: .milliseconds(100))
        }
        guard try await running.stdoutSoFar().contains("CaughtUp:") else {
            running.signal(SIGKILL)
            Issue.record("never caught up in 180 s: \(try await running.stdoutSoFar())")
            return
        }
        let writer = try await source.connect(database: sourceDatabase)
        try await writer.execute("UPDATE items SET v = 'changed' WHERE id <= 20")
        running.signal(SIGINT)
        let result = try await running.wait(timeout: 60)
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        #expect(result.stdout.contains("cutover requested"))
        #expect(result.stdout.contains("Complete:"))
        let expected = try await Fingerprint.of(source, database: sourceDatabase)
        let actual = try await Fingerprint.of(target, database: targetDatabase)
        #expect(actual == expected, "\(actual.differences(from: expected))")
    }

    @Test("--mode cleanup lists (--dry-run) and then removes what an aborted run left; the abort names that command")
    func cleanup() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await OnlinePreflightTests.smallSource()
        let targetDatabase = SharedClusters.uniqueName("cleanup")
        let config = try await OnlineMigrationTests.config(source: sourceDatabase, target: targetDatabase)
        let events = EventLog()
        let (_, run) = try await OnlineMigrationTests.startStreaming(config, events: events)
        run.cancel()
        await #expect(throws: MigrationCancelled.self) { try await run.value }
        let abortCommand = events.all.last { $0.detail["cleanup_command"] != nil }?.detail["cleanup_command"]?.description ?? ""
        #expect(
            abortCommand.contains("\(MigrationConfig.Setting.mode) cleanup")
                && abortCommand.contains("\(MigrationConfig.Setting.slotName) '\(config.online.slotName)'"))
        #expect(!abortCommand.contains(TestCluster.superuserPassword))
        // A DBA's own read-only setting, which this run did not make: cleanup must leave it.
        let admin = try await source.connect()
        try await admin.execute("ALTER DATABASE \(SQL.identifier(sourceDatabase)) SET default_transaction_read_only = on")

        var cleanup = config
        cleanup.mode = .cleanup
        cleanup.online.dryRun = true
        let dryEvents = EventLog()
        _ = try await Migrator(config: cleanup, onEvent: dryEvents.record).run()
        let listed = dryEvents.all.last?.detail["objects"]?.description ?? ""
        #expect(
            listed.contains("would drop subscription") && listed.contains("would drop replication slot")
                && listed.contains("would drop publication") && !listed.contains("would make the source database"), "\(listed)")
        #expect(dryEvents.all.contains { $0.detail["retained_wal_bytes"] != nil })
        var objects = try await OnlineMigrationTests.replicationObjects(config)
        #expect(objects.slot && objects.publication && objects.subscription != nil, "a dry run changes nothing")

        cleanup.online.dryRun = false
        _ = try await Migrator(config: cleanup).run()
        objects = try await OnlineMigrationTests.replicationObjects(config)
        #expect(!objects.slot && !objects.publication && objects.subscription == nil)
        #expect(
            try await admin.scalar(
                """
                SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
                WHERE d.datname = $1 AND 'default_transaction_read_only=on' = ANY (s.setconfig)
                """, [sourceDatabase]) == "1", "the DBA's read-only setting stays")
        try await admin.execute("ALTER DATABASE \(SQL.identifier(sourceDatabase)) RESET default_transaction_read_only")
        let writer = try await source.connect(database: sourceDatabase)

        // A publication that existed before the run is never dropped.
        try await writer.execute("CREATE PUBLICATION \(SQL.identifier(config.online.publication)) FOR ALL TABLES")
        _ = try await Migrator(config: cleanup).run()
        #expect(try await Self.publicationExists(config, source))
        try await writer.execute("DROP PUBLICATION \(SQL.identifier(config.online.publication))")
        _ = target
    }

    static func publicationExists(_ config: MigrationConfig, _ source: TestCluster) async throws -> Bool {
        let connection = try await source.connect(database: config.source.resolvedDatabase!)
        return try await connection.scalar("SELECT 1 FROM pg_publication WHERE pubname = $1", [config.online.publication]) != nil
    }
}
