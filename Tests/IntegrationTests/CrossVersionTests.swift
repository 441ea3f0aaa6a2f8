import Foundation
import PostgresClient
import Testing

@testable import PGDBMigrator

/// Upgrades, the most common reason to migrate: from Debian's PostgreSQL 15 to PostgreSQL 18
/// (the relocatable build `scripts/test.sh` installs), offline by both copy methods and online
/// with writes running, each proved by a strict verify that must find no false difference.
@Suite(.serialized, .timeLimit(.minutes(8)))
struct CrossVersionTests {
    /// A PostgreSQL 18 target for one test, and the configuration that migrates `source` into it
    /// with PostgreSQL 18's pg_dump and pg_restore (a dump tool is never older than either server).
    static func upgrade(
        _ source: String, into target: TestCluster, mode: MigrationConfig.Mode = .offline,
        _ adjust: (inout MigrationConfig) -> Void = { _ in }
    ) async throws -> MigrationConfig {
        let (shared, _) = try await SharedClusters.get()
        var config = MigrationConfig(
            mode: mode, source: try shared.connectionString(database: source),
            target: try target.connectionString(database: SharedClusters.uniqueName("upgraded")), jobs: 2)
        config.pgBinDirectory = target.bin
        config.stateDirectory = DestructiveMistakesTests.stateDirectory()
        if mode == .online {
            let suffix = SharedClusters.uniqueName("v18")
            config.online = OnlineSettings(
                slotName: "slot_\(suffix)", publication: "pub_\(suffix)", subscriptionName: "sub_\(suffix)",
                pollInterval: .milliseconds(500), fastPollInterval: .milliseconds(100), cutoverTimeout: .seconds(120))
        }
        adjust(&config)
        return config
    }

    static func expectEqual(_ config: MigrationConfig, source: TestCluster, target: TestCluster) async throws {
        let expected = try await Fingerprint.of(source, database: config.source.resolvedDatabase!, materializedViews: false)
        let actual = try await Fingerprint.of(target, database: config.target.resolvedDatabase!, materializedViews: false)
        #expect(actual == expected, "\(actual.differences(from: expected))")
    }

    @Test("15 → 18 offline, by either copy method: the strict verify finds no difference", arguments: MigrationConfig.CopyMethod.allCases)
    func offline(method: MigrationConfig.CopyMethod) async throws {
        let target = try await TestCluster.start(name: "pg18-offline", bin: try TestCluster.postgres18())
        defer { target.stop() }
        let (source, _) = try await SharedClusters.get()
        let database = try await OfflineMigrationTests.sampleSource()
        let config = try await Self.upgrade(database, into: target) { $0.copyMethod = method }
        let outcome = try await Migrator(config: config).run()
        #expect(outcome.verifyReport?.matches == true, "\(outcome.verifyReport?.problems ?? [])")
        #expect(outcome.verifyReport?.schemaDifferences.isEmpty == true)
        let version = try await target.connect().scalar("SHOW server_version_num")
        #expect(version?.hasPrefix("18") == true, "the target is PostgreSQL 18: \(version ?? "?")")
        try await Self.expectEqual(config, source: source, target: target)

        // Verify on its own, across the versions, still catches a real difference.
        var verify = config
        verify.mode = .verify
        let targetSession = try await target.connect(database: config.target.resolvedDatabase!)
        try await targetSession.execute(
            "ALTER TABLE sales.orders ALTER COLUMN status DROP DEFAULT; UPDATE inventory.products SET name = name || '!' WHERE id = 3")
        let report = try await Migrator(config: verify).run().verifyReport!
        #expect(report.tables.first { $0.table == "inventory.products" }?.matches == false)
        #expect(report.schemaDifferences["sales.orders"]?.contains { $0.hasPrefix("missing on the target: column status") } == true)
    }

    @Test(
        "15 → 18 native: a table of integers, text, time stamps and the like travels in binary and is verified as it copies (the source read once); a numeric table travels as text"
    )
    func binaryAcrossVersions() async throws {
        let target = try await TestCluster.start(name: "pg18-binary", bin: try TestCluster.postgres18())
        defer { target.stop() }
        let (source, _) = try await SharedClusters.get()
        let (database, session) = try await Self.plainSource(
            1...3000,
            "CREATE TABLE priced (id int PRIMARY KEY, price numeric(12, 2)); INSERT INTO priced SELECT g, g * 1.25 FROM generate_series(1, 500) g"
        )
        await session.close()
        let before = try await StreamVerifyTests.sequentialScans(["plain"], database: database)
        let events = EventLog()
        let config = try await Self.upgrade(database, into: target)
        let outcome = try await Migrator(config: config, onEvent: events.record).run()
        #expect(outcome.verifyReport?.matches == true, "\(outcome.verifyReport?.problems ?? [])")
        func format(_ table: String) -> EventValue? {
            events.all.first { $0.detail["table"] == .string(table) && $0.detail["format"] != nil }?.detail["format"]
        }
        #expect(format("\"public\".\"plain\"") == .string("binary"), "\(events.all.map(\.message))")
        #expect(format("\"public\".\"priced\"") == .string("text"))
        // plain: the source's stream summed as the servers hash values, the target's sum taken in its server;
        // priced: its rows digested and read back. Neither is read on the source again.
        let summary = events.all.first { $0.message.contains("verified as they were copied") }
        #expect(summary?.detail["streamed"] == .int(2), "\(events.all.map(\.message))")
        #expect(summary?.detail["summed_in_target"] == .int(1))
        #expect(summary?.detail["in_server"] == .int(0))
        let after = try await StreamVerifyTests.sequentialScans(["plain"], since: before, database: database)
        #expect((after["plain"] ?? 0) - (before["plain"] ?? 0) == 1, "plain: \(before["plain"] ?? -1) → \(after["plain"] ?? -1)")
        try await Self.expectEqual(config, source: source, target: target)
    }

    /// A new database on the shared source holding `plain` with the rows `ids` (then `more` SQL run), and a session
    /// on it.
    static func plainSource(_ ids: ClosedRange<Int>, _ more: String = "") async throws -> (String, Connection) {
        let (source, _) = try await SharedClusters.get()
        let database = try await source.createDatabase(SharedClusters.uniqueName("plain"))
        let session = try await source.connect(database: database)
        try await session.execute(
            """
            CREATE TABLE plain (id int PRIMARY KEY, small smallint, big bigint, flag boolean, name text, label varchar(20),
                                code char(6), day date, at timestamp, seen timestamptz, u uuid, raw bytea);
            \(plainRows(ids))
            \(more)
            """)
        return (database, session)
    }

    /// Rows of `plain`, a table of every type whose binary form travels between major versions: NULLs, infinities,
    /// non-ASCII text, negative and extreme numbers.
    static func plainRows(_ ids: ClosedRange<Int>) -> String {
        """
        INSERT INTO plain
        SELECT g, (g % 30000 - 15000)::smallint, g * -1234567890123, CASE g % 3 WHEN 0 THEN true WHEN 1 THEN false END,
               CASE WHEN g % 7 = 0 THEN NULL ELSE 'ünï ' || repeat(md5(g::text), g % 5) END, 'l' || g, left(md5(g::text), g % 7),
               date '1999-12-31' + (g * 37 - 50000), timestamp '2000-01-01 00:00:00.000001' + g * interval '1 min 1.5 s',
               CASE WHEN g = 1 THEN 'infinity' WHEN g = 2 THEN '-infinity' ELSE now() - g * interval '1 hour 1 us' END,
               md5(g::text)::uuid, CASE WHEN g % 11 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END
        FROM generate_series(\(ids.lowerBound), \(ids.upperBound)) g;
        """
    }

    @Test("15 → 18 by relay apply: a publication of plain types streams its values in binary; inserts, updates and deletes arrive")
    func relayBinaryAcrossVersions() async throws {
        let target = try await TestCluster.start(name: "pg18-relay-binary", bin: try TestCluster.postgres18())
        defer { target.stop() }
        let (source, _) = try await SharedClusters.get()
        let (database, session) = try await Self.plainSource(1...500)
        let config = try await Self.upgrade(database, into: target, mode: .online) {
            $0.online.freezeSourceAtCutover = true
            $0.online.apply = .relay
        }
        let events = EventLog()
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: events)
        try await session.execute(
            Self.plainRows(501...800)
                + "UPDATE plain SET name = name || ' ∑', seen = seen + interval '1 microsecond', raw = NULL WHERE id % 3 = 0;"
                + "UPDATE plain SET code = 'x', flag = NOT flag, u = md5(u::text)::uuid WHERE id % 4 = 0;"
                + "DELETE FROM plain WHERE id % 5 = 0")
        // What the walsender was asked for: pg_stat_activity shows its replication command once streaming starts
        // (before that, an empty query or the connection's earlier commands).
        let admin = try await source.connect()
        var command: String?
        for _ in 0..<100 {
            command = try await admin.scalar(
                "SELECT query FROM pg_stat_activity WHERE backend_type = 'walsender' AND application_name = $1",
                [RelayApplier.applicationName(slot: config.online.slotName)])
            if command?.contains("START_REPLICATION") == true { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(command?.contains("binary 'true'") == true, "\(command ?? "no walsender")")
        try await Self.cutOver(migrator, run, events: events, config: config, source: source, target: target)
    }

    /// Asks a frozen cutover of `run`, expects it verified and the target equal to the source, then lifts the freeze.
    static func cutOver(
        _ migrator: Migrator, _ run: Task<MigrationOutcome, Error>, events: EventLog, config: MigrationConfig, source: TestCluster,
        target: TestCluster
    ) async throws {
        migrator.cutoverHandle.request()
        let outcome = try await run.value
        #expect(outcome.cutoverTriggered)
        #expect(events.all.contains { $0.message.contains("table(s) match") }, "verified at cutover")
        try await expectEqual(config, source: source, target: target)
        let database = config.source.resolvedDatabase!
        let unfreeze = try await source.connect(database: database)
        try await unfreeze.execute("SET default_transaction_read_only = off")
        try await unfreeze.execute(SourceFreeze(database: database).undoSQL())
    }

    @Test(
        "15 → 18 online with writes running and a frozen cutover, by subscription and by relay apply (values as text, changes in batches): nothing lost, verify at cutover finds no difference",
        arguments: [OnlineSettings.ApplyMethod.subscription, .relay])
    func online(apply: OnlineSettings.ApplyMethod) async throws {
        let target = try await TestCluster.start(name: "pg18-online-\(apply)", bin: try TestCluster.postgres18())
        defer { target.stop() }
        let (source, _) = try await SharedClusters.get()
        let database = try await OfflineMigrationTests.sampleSource()
        let workload = WriteWorkload()
        try await workload.start(source, database: database)
        let config = try await Self.upgrade(database, into: target, mode: .online) {
            $0.online.freezeSourceAtCutover = true
            $0.online.apply = apply
        }
        let events = EventLog()
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: events)
        try await Task.sleep(for: .seconds(1.5))
        let committed = await workload.stop()
        #expect(committed > 10, "workload committed \(committed); error: \(workload.lastError ?? "none")")
        try await Self.cutOver(migrator, run, events: events, config: config, source: source, target: target)
    }

    @Test("15 → 18 with a search_path on the source database and none on the target: no false difference")
    func searchPath() async throws {
        let target = try await TestCluster.start(name: "pg18-search-path", bin: try TestCluster.postgres18())
        defer { target.stop() }
        let (source, _) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource(
            """
            CREATE SCHEMA s; CREATE TYPE s.mood AS ENUM ('ok', 'sad');
            CREATE TABLE public.feelings (id int PRIMARY KEY, m s.mood NOT NULL DEFAULT 'ok', note text CHECK (note <> ''));
            CREATE INDEX feelings_not_sad ON public.feelings (id) WHERE m <> 'sad';
            INSERT INTO public.feelings SELECT g, 'ok', 'n' FROM generate_series(1, 20) g;
            """)
        let admin = try await source.connect()
        try await admin.execute("ALTER DATABASE \(SQL.identifier(database)) SET search_path = public, s")
        let config = try await Self.upgrade(database, into: target)
        let outcome = try await Migrator(config: config).run()
        #expect(outcome.verifyReport?.matches == true, "\(outcome.verifyReport?.problems ?? [])")
        try await Self.expectEqual(config, source: source, target: target)
    }

    @Test("a target built without XML support is found at Validate, naming the tables, before anything is written")
    func targetWithoutXML() async throws {
        let target = try await TestCluster.start(name: "pg18-no-xml", bin: try TestCluster.postgres18())
        defer { target.stop() }
        let database = try await OnlinePreflightTests.smallSource(
            "CREATE TABLE public.documents (id int PRIMARY KEY, body xml); INSERT INTO public.documents VALUES (1, '<a>b</a>')")
        let config = try await Self.upgrade(database, into: target)
        let error = await #expect(throws: MigrationError.self) { try await Migrator(config: config).run() }
        #expect(error?.code == .preflight && error?.stage == .validate)
        #expect(
            error?.message.contains("without XML support") == true && error?.message.contains("public.documents") == true,
            "\(error?.message ?? "")")
        let admin = try await target.connect()
        #expect(try await admin.scalar("SELECT count(*) FROM pg_database WHERE datname = $1", [config.target.resolvedDatabase!]) == "0")
        // Left out, the rest migrates.
        var without = config
        without.filter = ObjectFilter(excludeTables: ["public.documents"])
        let outcome = try await Migrator(config: without).run()
        #expect(outcome.verifyReport?.matches == true)
    }

    @Test("a tablespace the data lives in and the target lacks is found at Validate")
    func missingTablespace() async throws {
        let target = try await TestCluster.start(name: "pg18-tablespace", bin: try TestCluster.postgres18())
        defer { target.stop() }
        let (source, _) = try await SharedClusters.get()
        let space = SharedClusters.uniqueName("fast_disk")
        let location = source.directory + "/" + space
        try FileManager.default.createDirectory(atPath: location, withIntermediateDirectories: true)
        try TestCluster.chownToServerUser(location)
        let admin = try await source.connect()
        try await admin.execute("CREATE TABLESPACE \(SQL.identifier(space)) LOCATION \(SQL.literal(location))")
        let database = try await OnlinePreflightTests.smallSource(
            "CREATE TABLE public.hot (id int PRIMARY KEY) TABLESPACE \(SQL.identifier(space))")
        let config = try await Self.upgrade(database, into: target)
        let error = await #expect(throws: MigrationError.self) { try await Migrator(config: config).run() }
        #expect(error?.code == .preflight)
        #expect(error?.message.contains("tablespaces the migrated tables or indexes live in are missing on the target: \(space)") == true)
        try await source.connect(database: database).execute("DROP TABLE public.hot")
        try await admin.execute("DROP TABLESPACE \(SQL.identifier(space))")
    }

    @Test("a server collation the columns use (ICU's und-x-icu) that the target build lacks is found at Validate")
    func missingCollation() async throws {
        let target = try await TestCluster.start(name: "pg18-collation", bin: try TestCluster.postgres18())
        defer { target.stop() }
        let database = try await OnlinePreflightTests.smallSource(
            "CREATE TABLE public.names (id int PRIMARY KEY, label text COLLATE \"und-x-icu\")")
        let config = try await Self.upgrade(database, into: target)
        let error = await #expect(throws: MigrationError.self) { try await Migrator(config: config).run() }
        #expect(error?.code == .preflight)
        #expect(
            error?.message.contains("collations the migrated columns use are missing on the target: und-x-icu") == true
                && error?.message.contains("ICU") == true, "\(error?.message ?? "")")
    }

    @Test("an existing target database whose encoding cannot hold the source's text is refused at Validate")
    func targetEncoding() async throws {
        let target = try await TestCluster.start(name: "pg18-encoding", bin: try TestCluster.postgres18())
        defer { target.stop() }
        let database = try await OnlinePreflightTests.smallSource()
        var config = try await Self.upgrade(database, into: target)
        let latin1 = "latin1_target"
        try await target.connect().execute(
            "CREATE DATABASE \(latin1) ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
        config.target = try target.connectionString(database: latin1)
        let error = await #expect(throws: MigrationError.self) { try await Migrator(config: config).run() }
        #expect(
            error?.message.contains("the target database's encoding is LATIN1 and the source's UTF8") == true, "\(error?.message ?? "")")
    }
}
