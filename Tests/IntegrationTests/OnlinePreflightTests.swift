import Foundation
import PGDBMigrator
import PostgresClient
import Testing

/// Online preflight: each misconfiguration stops the run before anything is created, and says how to fix it.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct OnlinePreflightTests {
    static func smallSource(_ setup: String = "") async throws -> String {
        let (source, _) = try await SharedClusters.get()
        let name = try await source.createDatabase(SharedClusters.uniqueName("small"))
        let connection = try await source.connect(database: name)
        try await connection.execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 100) g;" + setup)
        await connection.close()
        return name
    }

    /// Asserts the run failed in Validate with `message` and `fix`, and that no slot, publication, subscription or target database was left.
    static func expectCleanFailure(_ config: MigrationConfig, message: String, fix: String, on sourceCluster: TestCluster? = nil)
        async throws
    {
        let error = await #expect(throws: MigrationError.self) { try await Migrator(config: config).run() }
        #expect(error?.stage == .validate)
        #expect(error?.code == .preflight, "a Validate refusal of what the servers cannot do")
        #expect(error?.message.contains(message) == true, "message: \(error?.message ?? "none")")
        #expect(error?.fix?.contains(fix) == true, "fix: \(error?.fix ?? "none")")
        let (shared, target) = try await SharedClusters.get()
        let source = try await (sourceCluster ?? shared).connect(database: config.source.resolvedDatabase!)
        #expect(try await source.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", [config.online.slotName]) == "0")
        #expect(try await source.scalar("SELECT count(*) FROM pg_publication WHERE pubname = $1", [config.online.publication]) == "0")
        let targetAdmin = try await target.connect()
        #expect(
            try await targetAdmin.scalar("SELECT count(*) FROM pg_subscription WHERE subname = $1", [config.online.subscriptionName]) == "0"
        )
        #expect(
            try await targetAdmin.scalar("SELECT count(*) FROM pg_database WHERE datname = $1", [config.target.resolvedDatabase!]) == "0")
    }

    @Test("a source with wal_level = replica is refused with the fix")
    func walLevelReplica() async throws {
        let replicaOnly = try await TestCluster.start(name: "replica-wal", settings: ["wal_level": "replica"])
        defer { replicaOnly.stop() }
        let database = try await replicaOnly.createDatabase("app")
        let (_, target) = try await SharedClusters.get()
        var config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("never"))
        config.source = try replicaOnly.connectionString(database: database)
        try await Self.expectCleanFailure(config, message: "wal_level is 'replica'", fix: "wal_level = 'logical'", on: replicaOnly)
        _ = target
    }

    @Test("a source role without REPLICATION is refused with the fix")
    func roleWithoutReplication() async throws {
        let (source, _) = try await SharedClusters.get()
        let database = try await Self.smallSource()
        let role = SharedClusters.uniqueName("plain_user")
        let admin = try await source.connect(database: database)
        try await admin.execute(
            """
            CREATE ROLE \(SQL.identifier(role)) LOGIN PASSWORD 'plain-pw';
            GRANT SELECT ON ALL TABLES IN SCHEMA public TO \(SQL.identifier(role));
            """)
        var config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("never"))
        config.source = try ConnectionString(source.url(database: database, user: role, password: "plain-pw"))
        config.noACL = true
        try await Self.expectCleanFailure(config, message: "neither REPLICATION nor superuser", fix: "REPLICATION")
    }

    @Test(
        "tables without a primary key or replica identity are listed; --set-replica-identity-full fixes them (relay sessions asked for under a subscription are reported unused)"
    )
    func replicaIdentity() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await Self.smallSource(
            "CREATE TABLE \"No Key\" (a int, b text); INSERT INTO \"No Key\" VALUES (1, 'x'), (1, 'x');")
        let config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("identity_copy"))
        try await Self.expectCleanFailure(config, message: "public.\"No Key\"", fix: "\(MigrationConfig.Setting.setReplicaIdentityFull)")
        var fixing = config
        fixing.online.setReplicaIdentityFull = true
        // Relay sessions asked for where auto chooses a subscription: said, not silently ignored.
        fixing.online.relaySessions = 3
        let events = EventLog()
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(fixing, events: events)
        #expect(
            events.all.contains { $0.message.contains("\(MigrationConfig.Setting.relaySessions) 3 is not used: a subscription applies") })
        let writer = try await source.connect(database: database)
        try await writer.execute("UPDATE \"No Key\" SET b = 'y'; DELETE FROM items WHERE id <= 10")
        migrator.cutoverHandle.request()
        _ = try await run.value
        #expect(try await writer.scalar("SELECT relreplident::text FROM pg_class WHERE relname = 'No Key'") == "f")
        let expected = try await Fingerprint.of(source, database: database)
        let actual = try await Fingerprint.of(target, database: fixing.target.resolvedDatabase!)
        #expect(actual == expected, "\(actual.differences(from: expected))")
    }

    @Test("a standby as online source is refused naming the primary; offline from it works, never onto its primary")
    func standbySource() async throws {
        let primary = try await TestCluster.start(name: "primary")
        let database = try await primary.createDatabase("app")
        let setup = try await primary.connect(database: database)
        try await setup.execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items SELECT g, 'v' FROM generate_series(1, 50) g")
        let standby = try await primary.startStandby(name: "standby")
        defer {
            standby.stop()
            primary.stop()
        }
        let (_, target) = try await SharedClusters.get()
        var config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("from_standby"))
        config.source = try standby.connectionString(database: database)
        let error = await #expect(throws: MigrationError.self) { try await Migrator(config: config).run() }
        #expect(error?.stage == .validate)
        #expect(error?.message.contains("the source is a standby (in recovery)") == true, "\(error?.message ?? "")")
        #expect(error?.fix?.contains("point \(MigrationConfig.Setting.source) at the primary") == true)

        var offline = config
        offline.mode = .offline
        offline.stateDirectory = DestructiveMistakesTests.stateDirectory()
        _ = try await Migrator(config: offline).run()
        #expect(try await Fingerprint.of(target, database: config.target.resolvedDatabase!) == Fingerprint.of(primary, database: database))

        // The standby and its primary serve one database: the primary is never a target of its own standby.
        let before = try await Fingerprint.of(primary, database: database)
        var onto = offline
        onto.target = try primary.connectionString(database: database)
        onto.dropTargetFirst = true
        onto.terminateTargetSessions = true
        let refused = await #expect(throws: MigrationError.self) { try await Migrator(config: onto).run() }
        #expect(refused?.message.contains("the source is a standby of the other") == true, "\(refused?.message ?? "")")
        #expect(try await Fingerprint.of(primary, database: database) == before)
    }

    @Test("REPLICA IDENTITY FULL on a column type without equality (json, json[], point) is refused with what would work")
    func fullIdentityWithoutEquality() async throws {
        let database = try await Self.smallSource(
            """
            CREATE TABLE docs (id int NOT NULL, body json, tags json[]); CREATE UNIQUE INDEX docs_id ON docs (id);
            INSERT INTO docs VALUES (1, '{}', ARRAY['{}'::json]);
            CREATE TABLE places (label text, spot point); ALTER TABLE places REPLICA IDENTITY FULL;
            """)
        var config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("full_copy"))
        config.online.setReplicaIdentityFull = true  // the fix the tool suggests for docs, which has no primary key
        try await Self.expectCleanFailure(
            config, message: "REPLICA IDENTITY FULL cannot work for 2 table(s)", fix: "primary key or a replica identity index")
        let error = await #expect(throws: MigrationError.self) { try await Migrator(config: config).run() }
        let message = error?.message ?? ""
        #expect(message.contains("body (json)") && message.contains("tags (json[])") && message.contains("spot (point)"), "\(message)")
        #expect(message.contains("ALTER TABLE public.docs REPLICA IDENTITY USING INDEX \"docs_id\""), "\(message)")
        let (source, _) = try await SharedClusters.get()
        let admin = try await source.connect(database: database)
        #expect(try await admin.scalar("SELECT relreplident::text FROM pg_class WHERE relname = 'docs'") == "d", "nothing was set")
    }

    @Test("a slot of that name this run did not create is refused and left alone; --force-clean removes what an interrupted run left")
    func slotExists() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await Self.smallSource()
        let config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("slot_copy"))
        let admin = try await source.connect(database: database)
        try await admin.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [config.online.slotName])

        for forceClean in [false, true] {
            var attempt = config
            attempt.online.forceClean = forceClean
            let error = await #expect(throws: MigrationError.self) { try await Migrator(config: attempt).run() }
            #expect(error?.message.contains("already exists") == true && error?.message.contains("this run did not create it") == true)
            #expect(error?.fix?.contains("another \(MigrationConfig.Setting.slotName)") == true)
            #expect(try await admin.scalar("SELECT count(*) FROM pg_publication WHERE pubname = $1", [config.online.publication]) == "0")
            #expect(
                try await admin.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", [config.online.slotName]) == "1")
        }
        try await admin.query("SELECT pg_drop_replication_slot($1)", [config.online.slotName])

        // An interrupted run of our own leaves its slot, subscription and publication: --force-clean removes them and starts over.
        let (_, interrupted) = try await OnlineMigrationTests.startStreaming(config, events: EventLog())
        interrupted.cancel()
        await #expect(throws: MigrationCancelled.self) { try await interrupted.value }
        var forced = config
        forced.online.forceClean = true
        forced.dropTargetFirst = true
        // The target's apply worker reaches the source another way: over its unix socket.
        forced.online.subscriptionSource = try ConnectionString(
            "host=\(source.socketDirectory) port=\(source.port) user=postgres password=\(TestCluster.superuserPassword) dbname=\(database)")
        let events = EventLog()
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(forced, events: events)
        let targetAdmin = try await target.connect()
        let conninfo = try await targetAdmin.scalar(
            "SELECT subconninfo FROM pg_subscription WHERE subname = $1", [forced.online.subscriptionName])
        #expect(conninfo?.contains(source.socketDirectory) == true)
        try await admin.execute("INSERT INTO items VALUES (777, 'via socket')")
        migrator.cutoverHandle.request()
        _ = try await run.value
        let forceCleaned = events.all.filter { $0.message.hasPrefix("\(MigrationConfig.Setting.forceClean):") }.map(\.message)
        #expect(forceCleaned.contains { $0.contains("dropped replication slot") }, "\(forceCleaned)")
        #expect(forceCleaned.contains { $0.contains("dropped subscription") }, "\(forceCleaned)")
        let expected = try await Fingerprint.of(source, database: database)
        let actual = try await Fingerprint.of(target, database: forced.target.resolvedDatabase!)
        #expect(actual == expected, "\(actual.differences(from: expected))")
    }
}
