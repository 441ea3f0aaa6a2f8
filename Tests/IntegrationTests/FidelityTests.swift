import Foundation
import PostgresClient
import Testing

@testable import PGDBMigrator

/// The fidelity corpus (Tests/Fixtures/fidelity.sql: every type and shape we
/// promise to carry) through each mode, proven equal by verify and by content checksums.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct FidelityTests {
    static let fidelitySQLPath = URL(fileURLWithPath: sampleSQLPath).deletingLastPathComponent().appendingPathComponent("fidelity.sql").path

    static func corpus() async throws -> String {
        let (source, _) = try await SharedClusters.get()
        let name = try await source.createDatabase(SharedClusters.uniqueName("fidelity"))
        try await source.load(file: fidelitySQLPath, into: name)
        return name
    }

    @Test("offline: the corpus arrives exactly, verified, with each copy method", arguments: MigrationConfig.CopyMethod.allCases)
    func offline(copyMethod: MigrationConfig.CopyMethod) async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await Self.corpus()
        let targetDatabase = SharedClusters.uniqueName("fidelity_copy")
        let events = EventLog()
        let outcome = try await OfflineMigrationTests.migrate(source: sourceDatabase, target: targetDatabase, events: events) {
            $0.copyMethod = copyMethod
            $0.splitTablesLargerThan = 16 * 1024  // the larger corpus tables go in parts
        }
        #expect(outcome.verifyReport?.matches == true, "\(outcome.verifyReport?.problems ?? [])")
        #expect((outcome.verifyReport?.tables.count ?? 0) >= 13)
        let expected = try await Fingerprint.of(source, database: sourceDatabase)
        let actual = try await Fingerprint.of(target, database: targetDatabase)
        #expect(actual == expected, "\(actual.differences(from: expected))")
        #expect(actual.largeObjects["515151"] != nil)
        let sourceSchema = try await schemaDump(source, database: sourceDatabase)
        let targetSchema = try await schemaDump(target, database: targetDatabase)
        #expect(targetSchema == sourceSchema)
        if copyMethod == .native {
            // Both servers run one major version: tables of built-in types travel in binary COPY; one with
            // enums, composites, extension types and their arrays (server-specific OIDs in binary) as text.
            func format(_ table: String) -> EventValue? {
                events.all.first { $0.detail["table"] == .string(table) && $0.detail["format"] != nil }?.detail["format"]
            }
            #expect(format("\"fidelity\".\"toasted\"") == .string("binary"))
            #expect(format("\"fidelity\".\"no_key\"") == .string("binary"))
            #expect(format("\"fidelity\".\"all_types\"") == .string("text"))
        }
    }

    /// Each shape, changed while streaming.
    static let streamingChanges = [
        "UPDATE fidelity.toasted SET small = 'changed while streaming' WHERE id = 1",  // TOASTed column unchanged
        "UPDATE fidelity.parent SET id = id + 1000 WHERE id = (SELECT min(id) FROM fidelity.parent)",  // key update, cascades
        "DELETE FROM fidelity.no_key WHERE ctid = (SELECT ctid FROM fidelity.no_key WHERE (a, b) IN (SELECT a, b FROM fidelity.no_key GROUP BY 1, 2 HAVING count(*) > 1) LIMIT 1)",
        "INSERT INTO fidelity.orders VALUES ('us', 9001, 1.50), ('zz', 9002, 2.50), ('eu', 9003, 3.50)",  // partition routing
        "UPDATE fidelity.orders SET region = 'eu' WHERE region = 'us' AND id = 9001",  // moves between partitions
        "TRUNCATE fidelity.audited",
        "INSERT INTO fidelity.audited (id, payload) VALUES (77, 'after truncate')",
        "INSERT INTO fidelity.computed (id, a, b) VALUES (9001, 4, 5)",  // identity ALWAYS, generated column
        "UPDATE fidelity.all_types SET id = id + 100000 WHERE id = 2",
    ]

    @Test("online with a freeze: every shape changed while streaming arrives, verified at cutover")
    func online() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await Self.corpus()
        let targetDatabase = SharedClusters.uniqueName("fidelity_online")
        let setup = try await source.connect(database: sourceDatabase)
        try await setup.execute(
            "CREATE UNLOGGED TABLE fidelity.scratch (id int PRIMARY KEY, note text); INSERT INTO fidelity.scratch VALUES (1, 'before')")
        let config = try await OnlineMigrationTests.config(source: sourceDatabase, target: targetDatabase) {
            $0.online.freezeSourceAtCutover = true
        }
        let events = EventLog()
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: events)
        let writer = try await source.connect(database: sourceDatabase)
        for change in Self.streamingChanges { try await writer.execute(change) }
        // What replication does not carry, changed too: copied again at the frozen cutover.
        try await writer.execute(
            """
            INSERT INTO fidelity.scratch VALUES (2, 'while streaming'); UPDATE fidelity.scratch SET note = 'changed' WHERE id = 1;
            SELECT lo_put(515151, 2, '\\xffff'::bytea); SELECT lo_from_bytea(616161, 'new large object'::bytea);
            """)
        migrator.cutoverHandle.request()
        let outcome = try await run.value
        #expect(outcome.cutoverTriggered)
        #expect(events.all.contains { $0.stage == .verify && $0.message.contains("match") })

        let expected = try await Fingerprint.of(source, database: sourceDatabase, materializedViews: false)
        let actual = try await Fingerprint.of(target, database: targetDatabase, materializedViews: false)
        #expect(actual == expected, "\(actual.differences(from: expected))")
        #expect(actual.largeObjects.count == 2)
        #expect(actual.tables["fidelity.scratch"]?.hasPrefix("2:") == true)
        #expect(events.all.contains { $0.level == .warning && $0.message.contains("large object") })
        #expect(events.all.contains { $0.message.contains("copied unlogged table fidelity.scratch again") })
        let admin = try await source.connect()
        try await admin.execute("ALTER DATABASE \(SQL.identifier(sourceDatabase)) RESET default_transaction_read_only")
        _ = target
    }

    @Test("online with a freeze: writes are held for the switch only; a difference verify finds after it fails the run, naming it")
    func verifyAfterTheSwitch() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await OnlinePreflightTests.smallSource()
        let targetDatabase = SharedClusters.uniqueName("diverged")
        let config = try await OnlineMigrationTests.config(source: sourceDatabase, target: targetDatabase) {
            $0.online.freezeSourceAtCutover = true
        }
        let events = EventLog()
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: events)
        // A change made on the target alone: replication cannot know about it.
        let targetConnection = try await target.connect(database: targetDatabase)
        try await targetConnection.execute("UPDATE items SET v = 'edited on the target' WHERE id = 5")
        migrator.cutoverHandle.request()
        let error = await #expect(throws: MigrationError.self) { try await run.value }
        #expect(error?.code == .verifyMismatch)
        #expect(
            error?.message.contains("after the switch") == true && error?.message.contains("public.items differs") == true,
            "\(error?.message ?? "")")
        #expect(error?.fix?.contains("DROP SCHEMA") == true, "the fix says how to undo the freeze: \(error?.fix ?? "")")

        // The target was declared ready (with the time writes were held) before verify began.
        let all = events.all
        let ready = all.firstIndex { $0.kind == .targetReady }
        let verifying = all.firstIndex { $0.stage == .verify }
        #expect(ready != nil && verifying != nil && ready! < verifying!, "\(all.map(\.message))")
        #expect(ready.map { all[$0].detail["write_downtime_seconds"] != nil } == true)
        // The switch is done: the replication objects are gone, and the source stays frozen.
        let objects = try await OnlineMigrationTests.replicationObjects(config)
        #expect(!objects.slot && !objects.publication && objects.subscription == nil)
        let writer = try await source.connect(database: sourceDatabase)
        try await writer.execute("SET default_transaction_read_only = off")
        await #expect(throws: PostgresError.self) { try await writer.execute("INSERT INTO items VALUES (4242, 'refused')") }
        try await writer.execute(SourceFreeze(database: sourceDatabase).undoSQL())
    }

    @Test(
        "the database's settings, role settings, comment, privileges and connection limit travel (not the freeze's own setting)",
        arguments: [MigrationConfig.Mode.offline, .online])
    func databaseProperties(mode: MigrationConfig.Mode) async throws {
        let (source, target) = try await SharedClusters.get()
        let role = SharedClusters.uniqueName("app_reader")
        for cluster in [source, target] { try await cluster.connect().execute("CREATE ROLE \(SQL.identifier(role)) LOGIN") }
        let database = try await OnlinePreflightTests.smallSource()
        let name = SQL.identifier(database)
        try await source.connect().execute(
            """
            ALTER DATABASE \(name) SET search_path = "$user", public, "Other Schema";
            ALTER DATABASE \(name) SET lock_timeout = '5s';
            ALTER ROLE \(SQL.identifier(role)) IN DATABASE \(name) SET work_mem = '3MB';
            COMMENT ON DATABASE \(name) IS 'the shop''s data';
            REVOKE CONNECT ON DATABASE \(name) FROM PUBLIC;
            GRANT CONNECT, TEMPORARY ON DATABASE \(name) TO \(SQL.identifier(role)) WITH GRANT OPTION;
            ALTER DATABASE \(name) CONNECTION LIMIT 40
            """)
        let targetDatabase = SharedClusters.uniqueName("properties")
        if mode == .offline {
            _ = try await OfflineMigrationTests.migrate(source: database, target: targetDatabase)
        } else {
            let config = try await OnlineMigrationTests.config(source: database, target: targetDatabase) {
                $0.online.freezeSourceAtCutover = true
            }
            let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: EventLog())
            migrator.cutoverHandle.request()
            _ = try await run.value
        }
        var expected = try await DatabaseProperties.read(from: source.connect(database: database))
        let actual = try await DatabaseProperties.read(from: target.connect(database: targetDatabase))
        #expect(expected.settings.contains { $0.name == "search_path" } && expected.grants != nil, "\(expected)")
        // The freeze's own read-only setting stays behind.
        expected.settings.removeAll { $0.name == "default_transaction_read_only" }
        #expect(actual == expected)
        if mode == .online {
            let writer = try await source.connect(database: database)
            try await writer.execute("SET default_transaction_read_only = off")
            try await writer.execute(SourceFreeze(database: database).undoSQL())
        }
        let session = try await target.connect(database: targetDatabase)
        #expect(try await session.scalar("SHOW search_path") == "\"$user\", public, \"Other Schema\"")
    }

    @Test(
        "--copy-roles creates the roles the database needs, with attributes, memberships, settings and password; never logged",
        arguments: [MigrationConfig.Mode.offline, .online])
    func copyRoles(mode: MigrationConfig.Mode) async throws {
        let (source, target) = try await SharedClusters.get()
        let owner = SharedClusters.uniqueName("app_owner"), reader = SharedClusters.uniqueName("reader")
        let group = SharedClusters.uniqueName("readers"), password = "owner-Secret-\(UUID().uuidString.prefix(8))"
        // A role already on the target that the new group takes in, as on the source.
        let auditor = SharedClusters.uniqueName("auditor")
        for cluster in [source, target] { try await cluster.connect().execute("CREATE ROLE \(SQL.identifier(auditor))") }
        let admin = try await source.connect()
        try await admin.execute(
            """
            CREATE ROLE \(SQL.identifier(group)) NOLOGIN;
            CREATE ROLE \(SQL.identifier(owner)) LOGIN CREATEDB CONNECTION LIMIT 7 PASSWORD \(SQL.literal(password));
            CREATE ROLE \(SQL.identifier(reader)) LOGIN IN ROLE \(SQL.identifier(group));
            ALTER ROLE \(SQL.identifier(reader)) SET work_mem = '5MB';
            GRANT \(SQL.identifier(group)) TO \(SQL.identifier(auditor))
            """)
        let hash = try await admin.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1", [owner])
        let database = try await OnlinePreflightTests.smallSource(
            """
            ALTER TABLE items OWNER TO \(SQL.identifier(owner));
            GRANT SELECT ON items TO \(SQL.identifier(group));
            ALTER TABLE items ENABLE ROW LEVEL SECURITY;
            CREATE POLICY readers ON items FOR SELECT TO \(SQL.identifier(reader)) USING (id < 50);
            """)

        // A target login that may not create roles is refused at Validate, before anything is written.
        let limited = SharedClusters.uniqueName("limited")
        try await target.connect().execute("CREATE ROLE \(SQL.identifier(limited)) LOGIN CREATEDB PASSWORD 'limited-pw'")
        var refused = MigrationConfig(
            source: try source.connectionString(database: database),
            target: try ConnectionString(
                target.url(database: SharedClusters.uniqueName("roles_refused"), user: limited, password: "limited-pw")))
        refused.copyRoles = true
        let error = await #expect(throws: MigrationError.self) { try await Migrator(config: refused).run() }
        #expect(
            error?.message.contains("may not create roles") == true && error?.message.contains(owner) == true, "\(error?.message ?? "")")

        let targetDatabase = SharedClusters.uniqueName("roles_copy")
        let events = EventLog()
        if mode == .offline {
            let outcome = try await OfflineMigrationTests.migrate(source: database, target: targetDatabase, events: events) {
                $0.copyRoles = true
            }
            #expect(outcome.verifyReport?.matches == true)
        } else {
            let config = try await OnlineMigrationTests.config(source: database, target: targetDatabase) { $0.copyRoles = true }
            let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: events)
            try await source.connect(database: database).execute("UPDATE items SET v = 'streamed' WHERE id < 10")
            migrator.cutoverHandle.request()
            _ = try await run.value
            #expect(try await Fingerprint.of(target, database: targetDatabase) == Fingerprint.of(source, database: database))
        }
        let check = try await target.connect(database: targetDatabase)
        #expect(
            try await check.scalar(
                "SELECT rolcreatedb::text || rolconnlimit || rolcanlogin::text FROM pg_roles WHERE rolname = $1", [owner])
                == "true7true")
        #expect(try await check.scalar("SELECT pg_has_role($1, $2, 'MEMBER')::text", [reader, group]) == "true")
        #expect(try await check.scalar("SELECT pg_has_role($1, $2, 'MEMBER')::text", [auditor, group]) == "true")
        #expect(try await check.scalar("SELECT tableowner FROM pg_tables WHERE tablename = 'items'") == owner)
        #expect(
            try await check.scalar(
                "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting WHERE setdatabase = 0 AND setrole = $1::regrole",
                [reader]) == "work_mem=5MB")
        // The password came along: the owner logs in to the target with it.
        let asOwner = try await Connection.connect(
            try ConnectionString(target.url(database: targetDatabase, user: owner, password: password)), label: "owner")
        #expect(try await asOwner.scalar("SELECT current_user") == owner)
        let complete = events.all.first { $0.stage == .complete }
        #expect(complete?.message.contains("roles created on the target") == true && complete?.message.contains(reader) == true)
        #expect(events.all.allSatisfy { !"\($0.message) \($0.detail)".contains(hash ?? password) && !$0.message.contains(password) })
    }
}
