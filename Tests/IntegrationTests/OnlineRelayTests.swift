import Foundation
import PostgresClient
import Testing

@testable import PGDBMigrator

/// Online migrations with `--apply relay`: the tool streams the changes into the target itself.
@Suite(.timeLimit(.minutes(5)))
struct OnlineRelayTests {
    static func origins(_ name: String) async throws -> String? {
        let (_, target) = try await SharedClusters.get()
        return try await target.connect().scalar(
            "SELECT count(*)::text FROM pg_replication_origin WHERE \(RelayApplier.ownOrigins)", [name])
    }

    @Test("writes during the copy and streaming, a frozen cutover: equal by content, no subscription ever, origin and slot gone")
    func cutsOverLosingNothing() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await OfflineMigrationTests.sampleSource()
        let targetDatabase = SharedClusters.uniqueName("relayed")
        let workload = WriteWorkload()
        try await workload.start(source, database: sourceDatabase)
        let config = try await OnlineMigrationTests.config(source: sourceDatabase, target: targetDatabase) {
            $0.online.apply = .relay
            $0.online.freezeSourceAtCutover = true
        }
        let events = EventLog()
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: events)
        // Streaming: the source's only walsender for the slot is this process's, and the target has no subscription.
        let admin = try await source.connect()
        var walsender: String?
        for _ in 0..<300 where walsender == nil {
            try await Task.sleep(for: .milliseconds(100))
            walsender = try await admin.scalar(
                "SELECT r.application_name FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1",
                [config.online.slotName])
        }
        #expect(walsender == RelayApplier.applicationName(slot: config.online.slotName))
        let subscriptions = try await target.connect().scalar(
            "SELECT count(*) FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid WHERE d.datname = $1", [targetDatabase])
        #expect(subscriptions == "0")
        #expect(try await Self.origins(config.online.relayOrigin) == "1")
        migrator.cutoverHandle.request()  // writes still running: the freeze stops them
        let outcome = try await run.value
        let committed = await workload.stop()

        #expect(outcome.cutoverTriggered && committed > 5, "committed \(committed)")
        #expect(outcome.verifyReport?.matches == true, "\(outcome.verifyReport?.problems ?? [])")
        let expected = try await Fingerprint.of(source, database: sourceDatabase, materializedViews: false)
        let actual = try await Fingerprint.of(target, database: targetDatabase, materializedViews: false)
        #expect(actual == expected, "\(actual.differences(from: expected))")
        #expect(events.all.contains { $0.message.contains("relay apply started") })
        #expect(events.all.contains { $0.message.contains("dropped replication origin") })
        let objects = try await OnlineMigrationTests.replicationObjects(config)
        #expect(!objects.slot && !objects.publication && objects.subscription == nil)
        #expect(try await Self.origins(config.online.relayOrigin) == "0")
    }

    @Test(
        "aborted while streaming with two relay sessions: their origins are left and named; --resume carries on from them and loses nothing; cleanup removes the origin"
    )
    func abortResumeAndCleanup() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await OnlinePreflightTests.smallSource()
        let targetDatabase = SharedClusters.uniqueName("relay_resumed")
        let config = try await OnlineMigrationTests.config(source: sourceDatabase, target: targetDatabase) {
            $0.online.apply = .relay
            $0.online.relaySessions = 2
            $0.stateDirectory = DestructiveMistakesTests.stateDirectory()
        }
        let writer = try await source.connect(database: sourceDatabase)
        let events = EventLog()
        let (_, run) = try await OnlineMigrationTests.startStreaming(config, events: events)
        try await writer.execute("UPDATE items SET v = 'before the abort' WHERE id <= 50")
        // Each session binds an origin of its own as the apply starts.
        let started = ContinuousClock.now
        while try await Self.origins(config.online.relayOrigin) != "2" && ContinuousClock.now - started < .seconds(120) {
            try await Task.sleep(for: .milliseconds(100))
        }
        try await Task.sleep(for: .seconds(1))
        run.cancel()
        await #expect(throws: MigrationCancelled.self) { try await run.value }
        let left = events.all.last { $0.detail["left_in_place"] != nil }?.message ?? ""
        #expect(left.contains("replication origin") && left.contains(config.online.relayOrigin), "\(left)")
        #expect(try await Self.origins(config.online.relayOrigin) == "2")
        // Changes made while nothing applies wait in the slot.
        try await writer.execute("UPDATE items SET v = 'while stopped' WHERE id > 50; DELETE FROM items WHERE id = 100")

        var resume = config
        resume.resume = true
        let resumedEvents = EventLog()
        let (migrator, resumed) = try await OnlineMigrationTests.startStreaming(resume, events: resumedEvents)
        #expect(resumedEvents.all.contains { $0.message.contains("re-attached: relay apply carries on") })
        try await writer.execute("INSERT INTO items VALUES (101, 'after the resume')")
        migrator.cutoverHandle.request()
        _ = try await resumed.value
        let expected = try await Fingerprint.of(source, database: sourceDatabase)
        let actual = try await Fingerprint.of(target, database: targetDatabase)
        #expect(actual.tables == expected.tables, "\(actual.differences(from: expected))")
        #expect(try await Self.origins(config.online.relayOrigin) == "0")

        // Another run, aborted, then cleaned up: the origin goes with the slot.
        let second = try await OnlineMigrationTests.config(source: sourceDatabase, target: SharedClusters.uniqueName("relay_cleaned")) {
            $0.online.apply = .relay
            $0.stateDirectory = DestructiveMistakesTests.stateDirectory()
        }
        let (_, aborted) = try await OnlineMigrationTests.startStreaming(second, events: EventLog())
        aborted.cancel()
        _ = await aborted.result
        #expect(try await Self.origins(second.online.relayOrigin) != "0")
        var cleanup = second
        cleanup.mode = .cleanup
        _ = try await Migrator(config: cleanup).run()
        #expect(try await Self.origins(second.online.relayOrigin) == "0")
        let objects = try await OnlineMigrationTests.replicationObjects(second)
        #expect(!objects.slot && !objects.publication)
    }

    @Test(
        "a target server that cannot reach the source: a subscription is refused at Validate; auto chooses relay apply, says why, and migrates it equal by content"
    )
    func isolatedTarget() async throws {
        let (source, _) = try await SharedClusters.get()
        // Its own network namespace: its loopback is its own, so the source's 127.0.0.1 port is not there.
        let isolated = try await TestCluster.startIsolated(name: "isolated-target")
        defer { isolated.stop() }
        let sourceDatabase = try await OnlinePreflightTests.smallSource()
        var config = try await OnlineMigrationTests.config(source: sourceDatabase, target: "isolated") {
            $0.stateDirectory = DestructiveMistakesTests.stateDirectory()
            $0.online.apply = .subscription
        }
        config.target = try isolated.connectionString(database: "isolated")
        let refused = await #expect(throws: MigrationError.self) { try await Migrator(config: config).run() }
        #expect(refused?.message.contains("the target server cannot connect to the source") == true, "\(refused?.message ?? "")")

        config.online.apply = .auto
        let writer = try await source.connect(database: sourceDatabase)
        let events = EventLog()
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: events)
        let chosen = events.all.first { $0.message.hasPrefix("relay apply chosen") }
        #expect(chosen?.message.contains("the target server cannot connect to the source") == true, "\(events.all.map(\.message))")
        // The subscription name the run was given is said to go unused, not silently ignored.
        #expect(chosen?.message.contains("\(config.online.subscriptionName) is not used: relay apply makes no subscription") == true)
        try await writer.execute("UPDATE items SET v = 'relayed' WHERE id % 3 = 0")
        try await writer.execute("DELETE FROM items WHERE id = 7")
        migrator.cutoverHandle.request()
        let outcome = try await run.value
        #expect(outcome.cutoverTriggered)
        let expected = try await Fingerprint.of(source, database: sourceDatabase)
        let actual = try await Fingerprint.of(isolated, database: "isolated")
        #expect(actual.tables == expected.tables, "\(actual.differences(from: expected))")
    }

    @Test("--apply relay refuses the subscription's flags, --apply subscription the relay's, naming them; --relay-sessions is 1 to 8")
    func refusesSubscriptionFlags() async throws {
        let result = try await CLI.run([
            "--mode", "online", "--source", "postgresql://127.0.0.1/a", "--target", "postgresql://127.0.0.1/b", "--apply", "relay",
            "--subscription-name", "s", "--keep-subscription",
        ])
        #expect(result.status == 64, "\(result.stderr)")
        #expect(result.stderr.contains("--subscription-name, --keep-subscription have no meaning with --apply relay"), "\(result.stderr)")
        let online = ["--mode", "online", "--source", "postgresql://127.0.0.1/a", "--target", "postgresql://127.0.0.1/b"]
        let sessions = try await CLI.run(online + ["--apply", "subscription", "--relay-sessions", "2"])
        #expect(sessions.status == 64, "\(sessions.stderr)")
        #expect(sessions.stderr.contains("--relay-sessions has no meaning with --apply subscription"), "\(sessions.stderr)")
        let tooMany = try await CLI.run(online + ["--apply", "relay", "--relay-sessions", "9"])
        #expect(tooMany.status == 64, "\(tooMany.stderr)")
        #expect(tooMany.stderr.contains("--relay-sessions must be between 1 and 8"), "\(tooMany.stderr)")
    }
}
