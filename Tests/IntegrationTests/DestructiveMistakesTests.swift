import Foundation
import PostgresClient
import Testing

@testable import PGDBMigrator

/// The wrong arguments a tired operator gives: each is refused with a clear
/// message, and the source and everything that is not ours are unchanged
/// (checksums of every row, database settings, slots, publications).
@Suite(.serialized, .timeLimit(.minutes(6)))
struct DestructiveMistakesTests {
    /// What must not change on a server: a database's rows, its settings, its slots and its publications.
    struct Untouched: Equatable {
        var fingerprint: Fingerprint
        var settings: [String]
        var slots: [String]
        var publications: [String]

        static func of(_ cluster: TestCluster, database: String) async throws -> Untouched {
            let connection = try await cluster.connect(database: database)
            defer { Task { await connection.close() } }
            return Untouched(
                fingerprint: try await Fingerprint.of(connection),
                settings: try await connection.query(
                    """
                    SELECT array_to_string(s.setconfig, ',') FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
                    WHERE d.datname = current_database() ORDER BY 1
                    """
                ).rows.compactMap { $0[0] },
                slots: try await connection.query(
                    "SELECT slot_name || ':' || coalesce(plugin, '') FROM pg_replication_slots WHERE database = current_database() ORDER BY 1"
                )
                .rows.compactMap { $0[0] },
                publications: try await connection.query("SELECT pubname FROM pg_publication ORDER BY 1").rows.compactMap { $0[0] })
        }
    }

    static func stateDirectory() -> String { NSTemporaryDirectory() + "pgdm-state-\(UUID().uuidString)" }

    /// Runs the CLI; a refusal comes at once, so a run still going after `timeout` fails the test instead of hanging it.
    static func run(_ arguments: [String], stateDirectory: String = stateDirectory(), timeout: Double = 120) async throws -> CLI.Result {
        try await CLI.start(arguments + ["--state-dir", stateDirectory]).wait(timeout: timeout)
    }

    // MARK: - The same database

    @Test("source and target spelled differently but the same database: refused in every mode, the source unchanged")
    func sameDatabaseRefused() async throws {
        let (source, _) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let before = try await Untouched.of(source, database: database)
        let password = TestCluster.superuserPassword
        // Another port that leads to the same server (a proxy, a port forward).
        let alias = try TCPRelay(to: source.port)
        defer { alias.stop() }
        let spellings = [
            "postgresql://postgres:\(percentEncode(password))@localhost:\(source.port)/\(database)",
            "postgresql://postgres:\(percentEncode(password))@127.0.0.1:\(alias.port)/\(database)",
            "postgresql://postgres:\(percentEncode(password))@127.0.0.1:\(source.port)/\(database)?connect_timeout=10",
            "host=\(source.socketDirectory) port=\(source.port) dbname=\(database) user=postgres password=\(password)",
        ]
        let modes: [[String]] = [
            ["--mode", "offline", "--drop-target-first"], ["--mode", "online"], ["--mode", "verify"], ["--mode", "cleanup"],
        ]
        for target in spellings {
            for mode in modes {
                let result = try await Self.run(mode + ["--source", source.url(database: database), "--target", target, "--json"])
                #expect(result.status == 1, "\(mode) \(target): \(result.stderr)")
                #expect(result.failureCode == "same_database", "\(result.stdout)")
                #expect(result.stderr.contains("the source and the target are the same database"), "\(mode): \(result.stderr)")
                #expect(result.stderr.contains("an advisory lock held through the source connection was refused"), "\(result.stderr)")
                #expect(!result.stderr.contains(password))
            }
        }
        let after = try await Untouched.of(source, database: database)
        #expect(after == before, "\(after.fingerprint.differences(from: before.fingerprint))")
    }

    @Test("two databases on one server migrate like any other pair")
    func twoDatabasesOnOneServer() async throws {
        let (source, _) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let copy = SharedClusters.uniqueName("same_server_copy")
        let result = try await Self.run(["--source", source.url(database: database), "--target", source.url(database: copy)])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try await Fingerprint.of(source, database: copy) == Fingerprint.of(source, database: database))
    }

    @Test("a publication replaced under the run by one that is not marked as its own is left in place at cutover")
    func cutoverDropsOnlyMarkedPublication() async throws {
        let (source, _) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("not_ours_pub"))
        let events = EventLog()
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: events)
        let admin = try await source.connect(database: database)
        try await admin.execute("COMMENT ON PUBLICATION \(SQL.identifier(config.online.publication)) IS 'the reporting team''s'")
        migrator.cutoverHandle.request()
        _ = try await run.value
        #expect(try await admin.scalar("SELECT 1 FROM pg_publication WHERE pubname = $1", [config.online.publication]) == "1")
        #expect(
            events.all.contains {
                $0.level == .warning && $0.message.contains("left the publication")
                    && $0.message.contains("pg_dbmigrator did not create it")
            }, "\(events.all.map(\.message))")
        try await admin.execute("DROP PUBLICATION \(SQL.identifier(config.online.publication))")
    }

    // MARK: - Slots that are not ours

    @Test("a foreign slot, idle or in use, survives cleanup and --force-clean; only --drop-foreign-slot drops an idle one")
    func foreignSlots() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let idle = SharedClusters.uniqueName("debezium_prod")
        let active = SharedClusters.uniqueName("cdc_live")
        let admin = try await source.connect(database: database)
        try await admin.query("SELECT pg_create_logical_replication_slot($1, 'test_decoding')", [idle])
        let consumer = try await Self.startConsumer(source, database: database, slot: active)
        defer { consumer.cancel() }
        let before = try await Untouched.of(source, database: database)
        let common = ["--source", source.url(database: database), "--target", target.url(database: SharedClusters.uniqueName("never"))]

        for dryRun in [["--dry-run"], []] {
            let result = try await Self.run(["--mode", "cleanup", "--slot-name", idle] + dryRun + common)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stderr.contains("kept replication slot \"\(idle)\""), "\(result.stderr)")
            #expect(result.stderr.contains("plugin test_decoding") && result.stderr.contains("inactive"), "\(result.stderr)")
            #expect(result.stderr.contains("--drop-foreign-slot \(idle)"))
            #expect(!result.stderr.contains("would drop replication slot") && !result.stderr.contains("dropped replication slot"))
        }
        let inUse = try await Self.run(["--mode", "cleanup", "--slot-name", active, "--drop-foreign-slot", active] + common)
        #expect(inUse.status == 0, "\(inUse.stderr)")
        #expect(inUse.stderr.contains("a slot in use is never dropped"), "\(inUse.stderr)")
        let forceClean = try await Self.run(["--mode", "online", "--force-clean", "--slot-name", idle, "--json"] + common)
        #expect(forceClean.status == 1)
        #expect(forceClean.failureCode == "not_ours", "\(forceClean.stdout)")
        #expect(forceClean.stderr.contains("a replication slot named \"\(idle)\" already exists"), "\(forceClean.stderr)")
        #expect(forceClean.stderr.contains("this run did not create it"))
        #expect(try await Untouched.of(source, database: database) == before, "nothing foreign was touched")

        let explicit = try await Self.run(["--mode", "cleanup", "--slot-name", idle, "--drop-foreign-slot", idle] + common)
        #expect(explicit.status == 0, "\(explicit.stderr)")
        #expect(explicit.stderr.contains("dropped replication slot \"\(idle)\""))
        let slots = try await admin.query("SELECT slot_name FROM pg_replication_slots WHERE slot_name IN ($1, $2)", [idle, active])
            .rows.compactMap { $0[0] }
        #expect(slots == [active], "the slot in use stays; the idle one went only when named")
        consumer.cancel()
        _ = try? await consumer.value
        while try await admin.scalar("SELECT active::text FROM pg_replication_slots WHERE slot_name = $1", [active]) == "true" {
            try await Task.sleep(for: .milliseconds(50))
        }
        try await admin.query("SELECT pg_drop_replication_slot($1)", [active])
    }

    @Test("a user's subscription and publication that carry the configured names survive cleanup and --force-clean")
    func foreignSubscriptionAndPublication() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let targetDatabase = try await target.createDatabase(SharedClusters.uniqueName("their_target"))
        let subscription = SharedClusters.uniqueName("their_sub")
        let publication = SharedClusters.uniqueName("their_pub")
        let targetAdmin = try await target.connect(database: targetDatabase)
        try await targetAdmin.execute(
            "CREATE SUBSCRIPTION \(SQL.identifier(subscription)) CONNECTION 'host=127.0.0.1 port=1 dbname=elsewhere' "
                + "PUBLICATION \(SQL.identifier(publication)) WITH (connect = false)")
        let sourceAdmin = try await source.connect(database: database)
        try await sourceAdmin.execute("CREATE PUBLICATION \(SQL.identifier(publication)) FOR TABLE items")
        let subscriptions = { try await targetAdmin.scalar("SELECT count(*) FROM pg_subscription WHERE subname = $1", [subscription]) }
        let before = try await Untouched.of(source, database: database)
        let common = [
            "--source", source.url(database: database), "--target", target.url(database: targetDatabase),
            "--subscription-name", subscription, "--publication", publication,
        ]

        let cleanup = try await Self.run(["--mode", "cleanup"] + common)
        #expect(cleanup.status == 0, "\(cleanup.stderr)")
        #expect(cleanup.stderr.contains("kept subscription \(SQL.identifier(subscription))"), "\(cleanup.stderr)")
        #expect(!cleanup.stderr.contains("dropped subscription") && !cleanup.stderr.contains("dropped publication"), "\(cleanup.stderr)")
        let forceClean = try await Self.run(["--mode", "online", "--force-clean"] + common)
        #expect(forceClean.status != 0, "\(forceClean.stderr)")
        #expect(try await subscriptions() == "1", "the user's subscription stays")
        #expect(try await Untouched.of(source, database: database) == before, "the user's publication stays")
        try await targetAdmin.execute(
            "ALTER SUBSCRIPTION \(SQL.identifier(subscription)) SET (slot_name = NONE); DROP SUBSCRIPTION \(SQL.identifier(subscription))")
        try await sourceAdmin.execute("DROP PUBLICATION \(SQL.identifier(publication))")
    }

    /// `pg_recvlogical` attached to a new slot, as a CDC pipeline would be; returns once the slot is in use.
    /// Cancelling the task stops it (SIGTERM to its process group, then SIGKILL).
    static func startConsumer(_ cluster: TestCluster, database: String, slot: String) async throws -> Task<Void, Error> {
        let consumer = ChildProcess(
            executable: try await TestCluster.clientBinary("pg_recvlogical"),
            arguments: [
                "--dbname=host=127.0.0.1 port=\(cluster.port) user=postgres dbname=\(database)", "--slot", slot,
                "--create-slot", "--start", "--plugin", "test_decoding", "--file", "/dev/null", "--no-loop",
            ],
            environment: ["PGPASSWORD": TestCluster.superuserPassword])
        let task = Task { _ = try await consumer.run() }
        let admin = try await cluster.connect()
        let deadline = Date().addingTimeInterval(30)
        while try await admin.scalar("SELECT active::text FROM pg_replication_slots WHERE slot_name = $1", [slot]) != "true" {
            guard Date() < deadline else {
                task.cancel()
                throw TestSupportError("pg_recvlogical never attached to \(slot)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        return task
    }

    // MARK: - The target

    @Test("--drop-target-first lists what it drops, refuses while an application is connected, and never drops postgres")
    func dropTargetFirst() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let targetDatabase = try await target.createDatabase(SharedClusters.uniqueName("live_target"))
        let app = try await Connection.connect(
            try target.connectionString(database: targetDatabase).setting("application_name", to: "billing-app"), label: "app")
        try await app.execute("CREATE TABLE invoices (id int PRIMARY KEY); INSERT INTO invoices SELECT generate_series(1, 50)")
        let before = try await Untouched.of(target, database: targetDatabase)
        let arguments = [
            "--source", source.url(database: database), "--target", target.url(database: targetDatabase), "--drop-target-first",
        ]

        // A CDC slot in the target database would go with it.
        let cdc = SharedClusters.uniqueName("target_cdc")
        try await app.query("SELECT pg_create_logical_replication_slot($1, 'test_decoding')", [cdc])
        let withSlot = try await Self.run(arguments + ["--terminate-target-sessions"])
        #expect(withSlot.status == 1, "\(withSlot.stderr)")
        #expect(withSlot.stderr.contains("replication slot(s) \(cdc) (test_decoding)"), "\(withSlot.stderr)")
        #expect(try await app.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", [cdc]) == "1")
        try await app.query("SELECT pg_drop_replication_slot($1)", [cdc])

        let refused = try await Self.run(arguments + ["--json"])
        #expect(refused.status == 1, "\(refused.stderr)")
        #expect(refused.failureCode == "busy", "\(refused.stdout)")
        #expect(refused.stderr.contains("billing-app") && refused.stderr.contains("1 table(s)"), "\(refused.stderr)")
        let user = try await app.scalar("SELECT current_user") ?? "?"
        let size = try await app.scalar("SELECT pg_size_pretty(pg_database_size(current_database()))") ?? "?"
        #expect(refused.stderr.contains("\(user) (billing-app) from 127.0.0.1") && refused.stderr.contains(size), "\(refused.stderr)")
        #expect(refused.stderr.contains("--terminate-target-sessions"))
        #expect(try await app.scalar("SELECT count(*) FROM invoices") == "50", "the application's session lives on")
        #expect(try await Untouched.of(target, database: targetDatabase) == before)

        let forced = try await Self.run(arguments + ["--terminate-target-sessions"])
        #expect(forced.status == 0, "\(forced.stderr)")
        #expect(forced.stderr.contains("will be dropped and re-created") && forced.stderr.contains("billing-app"), "\(forced.stderr)")
        #expect(try await Fingerprint.of(target, database: targetDatabase) == Fingerprint.of(source, database: database))

        for maintenance in ["postgres", "template0", "template1"] {
            let result = try await Self.run(
                ["--source", source.url(database: database), "--target", target.url(database: maintenance), "--drop-target-first"])
            #expect(result.status == 64, "\(result.stderr)")
            #expect(result.stderr.contains("never dropped"))
        }
    }

    @Test("--dump-scope data-only refuses a target whose tables hold rows, and --drop-target-first with it")
    func dataOnlyOntoRows() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let targetDatabase = try await target.createDatabase(SharedClusters.uniqueName("data_only"))
        let connection = try await target.connect(database: targetDatabase)
        try await connection.execute("CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (7, 'mine')")
        let before = try await Untouched.of(target, database: targetDatabase)
        let arguments = [
            "--source", source.url(database: database), "--target", target.url(database: targetDatabase), "--dump-scope", "data-only",
        ]

        let refused = try await Self.run(arguments)
        #expect(refused.status == 1, "\(refused.stderr)")
        #expect(refused.stderr.contains("already hold rows: public.items"), "\(refused.stderr)")
        #expect(!refused.stderr.contains("--resume"), "the hint must not lead to a resume that drops the target")
        #expect(try await Untouched.of(target, database: targetDatabase) == before)
        let combined = try await Self.run(arguments + ["--drop-target-first"])
        #expect(combined.status == 64, "\(combined.stderr)")

        // Emptied, the same command loads the rows.
        try await connection.execute("TRUNCATE items")
        let loaded = try await Self.run(arguments)
        #expect(loaded.status == 0, "\(loaded.stderr)")
        #expect(try await Fingerprint.of(target, database: targetDatabase) == Fingerprint.of(source, database: database))
    }

    // MARK: - State that is not ours

    @Test("cleanup refuses a recorded run whose source was another database, and changes nothing")
    func cleanupChecksTheRecordedSource() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        var config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("elsewhere")) {
            $0.stateDirectory = Self.stateDirectory()
        }
        let admin = try await source.connect(database: database)
        try await admin.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [config.online.slotName])
        // The record of a run that made a slot of this name on another source database.
        let store = try RunStateStore.open(for: config)
        try store.update {
            $0.online.slotCreated = true
            $0.online.sourceIdentity = "7000000000000000000/16384"
        }
        config.mode = .cleanup
        let error = await #expect(throws: MigrationError.self) { try await Migrator(config: config).run() }
        #expect(error?.message.contains("migrated from another source database") == true, "\(error?.message ?? "")")
        #expect(error?.code == .runState)
        #expect(try await admin.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", [config.online.slotName]) == "1")
        #expect(FileManager.default.fileExists(atPath: RunStateStore.statePath(for: config)), "the record stays")
        try await admin.query("SELECT pg_drop_replication_slot($1)", [config.online.slotName])
        _ = target
    }

    @Test("cleanup leaves a read-only setting it did not make, also after a completed frozen cutover")
    func cleanupKeepsForeignReadOnly() async throws {
        let (source, _) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let targetDatabase = SharedClusters.uniqueName("frozen_copy")
        let config = try await OnlineMigrationTests.config(source: database, target: targetDatabase) {
            $0.online.freezeSourceAtCutover = true
            $0.stateDirectory = Self.stateDirectory()
        }
        let events = EventLog()
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: events)
        migrator.cutoverHandle.request()
        _ = try await run.value
        let frozen = try await Untouched.of(source, database: database)
        #expect(frozen.settings.contains { $0.contains("default_transaction_read_only=on") }, "the old primary stays read-only")

        var cleanup = config
        cleanup.mode = .cleanup
        _ = try await Migrator(config: cleanup).run()
        #expect(try await Untouched.of(source, database: database) == frozen, "cleanup reopened the old primary")

        // A freeze the recorded run made (a cutover killed before it finished) is undone.
        var killed = config
        killed.resume = false
        killed.stateDirectory = Self.stateDirectory()
        let store = try RunStateStore.open(for: killed)
        try store.update { $0.online.frozenDatabase = database }
        var undo = killed
        undo.mode = .cleanup
        let undoEvents = EventLog()
        _ = try await Migrator(config: undo, onEvent: undoEvents.record).run()
        #expect(undoEvents.all.contains { $0.message.contains("made the source database \(SQL.identifier(database)) writable again") })
        #expect(try await Untouched.of(source, database: database).settings.allSatisfy { !$0.contains("default_transaction_read_only") })

        // A DBA's own read-only setting, with no run recorded at all.
        let admin = try await source.connect()
        let other = try await OnlinePreflightTests.smallSource()
        try await admin.execute("ALTER DATABASE \(SQL.identifier(other)) SET default_transaction_read_only = on")
        let dba = try await Untouched.of(source, database: other)
        let result = try await Self.run([
            "--mode", "cleanup", "--source", source.url(database: other),
            "--target", try await SharedClusters.get().target.url(database: SharedClusters.uniqueName("never")),
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try await Untouched.of(source, database: other) == dba)
    }

    @Test("a freeze over a DBA's own read-only setting (spelt yes, 1) leaves it as typed, after an aborted cutover and after Complete")
    func freezeOverDBAReadOnly() async throws {
        let (source, _) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let admin = try await source.connect()
        let setting = { try await Untouched.of(source, database: database).settings }

        // An aborted cutover (a prepared transaction stops it after the freeze) undoes only what it did.
        try await admin.execute("ALTER DATABASE \(SQL.identifier(database)) SET default_transaction_read_only = yes")
        let typed = try await setting()
        var config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("dba_frozen")) {
            $0.online.freezeSourceAtCutover = true
        }
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: EventLog())
        let writer = try await source.connect(database: database)
        let gid = SharedClusters.uniqueName("px")
        try await writer.execute("SET default_transaction_read_only = off")
        try await writer.execute("BEGIN; INSERT INTO items VALUES (-1, 'prepared'); PREPARE TRANSACTION \(SQL.literal(gid))")
        migrator.cutoverHandle.request()
        await #expect(throws: MigrationError.self) { try await run.value }
        let finisher = try await source.connect(database: database)
        try await finisher.execute("ROLLBACK PREPARED \(SQL.literal(gid))")
        #expect(try await setting() == typed, "the abort reset the DBA's setting")
        try await OnlineMigrationTests.removeReplicationObjects(config)

        // A completed cutover keeps it too, and says the database already was read-only.
        try await admin.execute("ALTER DATABASE \(SQL.identifier(database)) SET default_transaction_read_only = '1'")
        let one = try await setting()
        config.target = try await SharedClusters.get().target.connectionString(database: SharedClusters.uniqueName("dba_frozen"))
        let events = EventLog()
        let (second, completed) = try await OnlineMigrationTests.startStreaming(config, events: events)
        second.cutoverHandle.request()
        _ = try await completed.value
        #expect(events.all.contains { $0.message.contains("it already was by its own settings") }, "\(events.all.map(\.message))")
        #expect(try await setting() == one)
        try await admin.execute("ALTER DATABASE \(SQL.identifier(database)) RESET default_transaction_read_only")
    }

    @Test("forgetting --resume once keeps the interrupted run's record; --resume then carries on and cuts over")
    func forgettingResume() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let targetDatabase = SharedClusters.uniqueName("forgot_resume")
        let config = try await OnlineMigrationTests.config(source: database, target: targetDatabase) {
            $0.stateDirectory = Self.stateDirectory()
        }
        let (_, run) = try await OnlineMigrationTests.startStreaming(config, events: EventLog())
        run.cancel()
        await #expect(throws: MigrationCancelled.self) { try await run.value }
        let statePath = RunStateStore.statePath(for: config)
        let recorded = try Data(contentsOf: URL(fileURLWithPath: statePath))

        let error = await #expect(throws: MigrationError.self) { try await Migrator(config: config).run() }
        #expect(error?.message.contains("an interrupted online run is recorded") == true, "\(error?.message ?? "")")
        #expect(
            error?.fix?.contains("\(MigrationConfig.Setting.resume)") == true
                && error?.fix?.contains("\(MigrationConfig.Setting.mode) cleanup") == true)
        #expect(try Data(contentsOf: URL(fileURLWithPath: statePath)) == recorded, "the record is untouched")

        let writer = try await source.connect(database: database)
        try await writer.execute("UPDATE items SET v = 'after the abort' WHERE id <= 10")
        var resume = config
        resume.resume = true
        let events = EventLog()
        let (migrator, resumed) = try await OnlineMigrationTests.startStreaming(resume, events: events)
        migrator.cutoverHandle.request()
        _ = try await resumed.value
        #expect(events.all.contains { $0.message.contains("re-attach") }, "resumed by re-attaching, not by copying again")
        #expect(try await Fingerprint.of(target, database: targetDatabase) == Fingerprint.of(source, database: database))
    }

    @Test("while a run streams, a second run can take neither its publication, its state directory nor its target")
    func oneRunAtATime() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let targetDatabase = SharedClusters.uniqueName("first_run")
        let stateDirectory = Self.stateDirectory()
        let first = try await OnlineMigrationTests.config(source: database, target: targetDatabase) {
            $0.stateDirectory = stateDirectory
        }
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(first, events: EventLog())

        // Another target, its own slot and subscription, but the first run's publication.
        var second = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("second_run"))
        second.online.publication = first.online.publication
        second.stateDirectory = Self.stateDirectory()
        let publicationError = await #expect(throws: MigrationError.self) { try await Migrator(config: second).run() }
        #expect(publicationError?.message.contains("belongs to another pg_dbmigrator run") == true, "\(publicationError?.message ?? "")")
        #expect(publicationError?.fix?.contains("\(MigrationConfig.Setting.publication)") == true)

        let names = ["--slot-name", "other_slot", "--publication", "other_pub", "--subscription-name", "other_sub"]
        let sameDirectory = try await Self.run(
            [
                "--mode", "online", "--source", source.url(database: database), "--target",
                target.url(database: SharedClusters.uniqueName("x")),
            ]
                + names, stateDirectory: stateDirectory)
        #expect(sameDirectory.status == 1)
        #expect(sameDirectory.failureCode == nil, "no --json, no error object on stdout")
        #expect(
            sameDirectory.stderr.contains("another pg_dbmigrator run (PID \(getpid())) is using the state directory"),
            "\(sameDirectory.stderr)")

        let localhost = "postgresql://postgres:\(percentEncode(TestCluster.superuserPassword))@localhost:\(target.port)/\(targetDatabase)"
        let sameTarget = try await Self.run(
            [
                "--mode", "offline", "--drop-target-first", "--terminate-target-sessions", "--source", source.url(database: database),
                "--target", localhost, "--json",
            ])
        #expect(sameTarget.status == 1)
        #expect(sameTarget.failureCode == "busy", "\(sameTarget.stdout)")
        #expect(sameTarget.stderr.contains("another migration is already running into the target database"), "\(sameTarget.stderr)")
        #expect(sameTarget.stderr.contains("pg_dbmigrator pid \(getpid())"))

        // The first run never noticed: it cuts over with every change.
        let writer = try await source.connect(database: database)
        try await writer.execute("INSERT INTO items VALUES (5000, 'late')")
        migrator.cutoverHandle.request()
        _ = try await run.value
        #expect(try await Fingerprint.of(target, database: targetDatabase) == Fingerprint.of(source, database: database))
        #expect(
            try await writer.scalar(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ('other_slot', $1)", [second.online.slotName]) == "0")
    }

    // MARK: - Arguments

    @Test("numbers out of range and invalid names exit 64 before anything is touched")
    func invalidArguments() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let before = try await Untouched.of(source, database: database)
        let servers = ["--source", source.url(database: database), "--target", target.url(database: SharedClusters.uniqueName("never"))]
        let cases: [(arguments: [String], says: String)] = [
            (["--mode", "online", "--cutover-poll-secs", "inf"], "--cutover-poll-secs"),
            (["--mode", "online", "--cutover-poll-secs", "nan"], "--cutover-poll-secs"),
            (["--mode", "online", "--cutover-timeout-secs", "1e300"], "--cutover-timeout-secs"),
            (["--mode", "online", "--cutover-fast-poll-ms", "0"], "--cutover-fast-poll-ms"),
            (["--split-tables-larger-than", "1e30"], "--split-tables-larger-than"),
            (["--maintenance-work-mem", "1e30"], "--maintenance-work-mem"),
            (["--mode", "online", "--max-retained-wal-mb", "18446744073709551615"], "--max-retained-wal-mb"),
            (["--verify-split-mb", "9223372036854775807"], "--verify-split-mb"),
            (["--mode", "online", "--slot-name", "My-Slot"], "not a valid replication slot name"),
            (["--mode", "online", "--publication", String(repeating: "p", count: 64)], "at most 63 bytes"),
            (["--mode", "online", "--subscription-name", ""], "--subscription-name must not be empty"),
            (["--jobs", "0"], "--jobs"),
            (["--mode", "cleanup", "--drop-foreign-slot", "Bad Slot"], "not a valid replication slot name"),
            (["--drop-foreign-slot", "x"], "--drop-foreign-slot is a --mode cleanup option"),
            (["--terminate-target-sessions"], "goes with --drop-target-first"),
            (["--mode", "online", "--resume", "--force-clean"], "--force-clean starts afresh"),
        ]
        for (arguments, says) in cases {
            let result = try await Self.run(arguments + servers)
            #expect(result.status == 64, "\(arguments): status \(result.status), \(result.stderr)")
            #expect(result.stderr.contains(says), "\(arguments): \(result.stderr)")
        }
        let coded = try await Self.run(["--jobs", "0", "--json"] + servers)
        #expect(coded.status == 64 && coded.failureCode == "invalid_argument", "\(coded.stdout)")
        // PostgreSQL would connect to the first 63 bytes of the name, which the target lock would not match.
        let longName = try await Self.run([
            "--source", source.url(database: database), "--target", target.url(database: String(repeating: "t", count: 64)),
        ])
        #expect(longName.status == 64, "\(longName.stderr)")
        #expect(longName.stderr.contains("the --target database name is 64 bytes long"), "\(longName.stderr)")
        #expect(try await Untouched.of(source, database: database) == before, "no publication or slot was created")
    }
}
