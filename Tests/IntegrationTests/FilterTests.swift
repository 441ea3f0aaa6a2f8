import PGDBMigrator
import PostgresClient
import Testing

/// Each filter flag, on a database whose schemas do not depend on each other.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct FilterTests {
    static func source() async throws -> String {
        let (source, _) = try await SharedClusters.get()
        let name = try await source.createDatabase(SharedClusters.uniqueName("filters"))
        let connection = try await source.connect(database: name)
        try await connection.execute(
            """
            CREATE SCHEMA alpha; CREATE SCHEMA beta; CREATE SCHEMA "Gamma Mixed";
            CREATE TABLE alpha.keep (id int PRIMARY KEY, v text);
            CREATE TABLE alpha.large_log (id int PRIMARY KEY, v text);
            CREATE TABLE beta.other (id int PRIMARY KEY, v text);
            CREATE TABLE "Gamma Mixed"."Case Table" (id int PRIMARY KEY, v text);
            INSERT INTO alpha.keep SELECT g, 'k' || g FROM generate_series(1, 100) g;
            INSERT INTO alpha.large_log SELECT g, 'l' || g FROM generate_series(1, 300) g;
            INSERT INTO beta.other SELECT g, 'o' || g FROM generate_series(1, 50) g;
            INSERT INTO "Gamma Mixed"."Case Table" SELECT g, 'g' || g FROM generate_series(1, 20) g;
            """)
        await connection.close()
        return name
    }

    static let all: Set<String> = ["alpha.keep", "alpha.large_log", "beta.other", "\"Gamma Mixed\".\"Case Table\""]

    @Test(
        "each filter copies exactly the tables it names",
        arguments: [
            (ObjectFilter(schemas: ["alpha"]), Set(["alpha.keep", "alpha.large_log"])),
            (ObjectFilter(excludeSchemas: ["beta"]), all.subtracting(["beta.other"])),
            (ObjectFilter(excludeSchemas: ["\"Gamma Mixed\""]), all.subtracting(["\"Gamma Mixed\".\"Case Table\""])),
            (ObjectFilter(tables: ["alpha.keep", "beta.other"]), Set(["alpha.keep", "beta.other"])),
            (ObjectFilter(excludeTables: ["alpha.large_log"]), all.subtracting(["alpha.large_log"])),
            (ObjectFilter(schemas: ["alpha"], excludeTables: ["alpha.large_log"]), Set(["alpha.keep"])),
            // pg_dump emits CREATE SCHEMA public for --schema public, which a new database already has.
            (ObjectFilter(schemas: ["public"]), Set<String>()),
        ])
    func filter(_ filter: ObjectFilter, expected: Set<String>) async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await Self.source()
        let targetDatabase = SharedClusters.uniqueName("filtered")
        var config = MigrationConfig(
            source: try source.connectionString(database: sourceDatabase),
            target: try target.connectionString(database: targetDatabase))
        config.filter = filter
        _ = try await Migrator(config: config).run()

        let copied = try await Fingerprint.of(target, database: targetDatabase)
        let original = try await Fingerprint.of(source, database: sourceDatabase)
        #expect(Set(copied.tables.keys) == expected)
        for table in expected {
            #expect(copied.tables[table] == original.tables[table], "content of \(table)")
        }
    }
}

/// A partitioned table named in a filter means its tree; a partition named alone brings its parent's definition.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct PartitionFilterTests {
    static func source() async throws -> String {
        try await OnlinePreflightTests.smallSource(
            """
            CREATE SCHEMA app;
            CREATE TABLE app.measurements (id int, taken date NOT NULL, v text, PRIMARY KEY (id, taken)) PARTITION BY RANGE (taken);
            CREATE TABLE app.measurements_2023 PARTITION OF app.measurements FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
            CREATE TABLE app.measurements_2024 PARTITION OF app.measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
            CREATE TABLE app.measurements_default PARTITION OF app.measurements DEFAULT;
            INSERT INTO app.measurements SELECT g, date '2023-06-01' + (g % 900), 'm' || g FROM generate_series(1, 3000) g;
            """)
    }

    @Test(
        "a partitioned table named means its tree; a partition named alone brings its parent's definition",
        arguments: [
            (
                ObjectFilter(tables: ["app.measurements"]),
                Set(["app.measurements_2023", "app.measurements_2024", "app.measurements_default"])
            ),
            (
                ObjectFilter(excludeTables: ["app.measurements_2023"]),
                Set(["app.measurements_2024", "app.measurements_default", "public.items"])
            ),
            (ObjectFilter(tables: ["app.measurements_2024"]), Set(["app.measurements_2024"])),
            (ObjectFilter(excludeTables: ["app.measurements"]), Set(["public.items"])),
        ])
    func partitionTrees(filter: ObjectFilter, expected: Set<String>) async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await Self.source()
        let targetDatabase = SharedClusters.uniqueName("partitions")
        let outcome = try await OfflineMigrationTests.migrate(source: sourceDatabase, target: targetDatabase) { $0.filter = filter }
        #expect(outcome.verifyReport?.matches == true, "\(outcome.verifyReport?.problems ?? [])")
        let copied = try await Fingerprint.of(target, database: targetDatabase)
        let original = try await Fingerprint.of(source, database: sourceDatabase)
        #expect(Set(copied.tables.keys) == expected)
        for table in expected { #expect(copied.tables[table] == original.tables[table], "content of \(table)") }
        let parent = try await target.connect(database: targetDatabase).scalar("SELECT to_regclass('app.measurements')::text")
        #expect((parent != nil) == expected.contains { $0.hasPrefix("app.") }, "the parent's definition comes with any partition")
    }

    @Test("online, excluding one partition publishes the others one by one: changes to them stream, the excluded one's never")
    func excludedPartitionOnline() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await Self.source()
        let targetDatabase = SharedClusters.uniqueName("partitions_online")
        let config = try await OnlineMigrationTests.config(source: sourceDatabase, target: targetDatabase) {
            $0.filter = ObjectFilter(excludeTables: ["app.measurements_2023"])
        }
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: EventLog())
        let writer = try await source.connect(database: sourceDatabase)
        try await writer.execute(
            "UPDATE app.measurements SET v = 'changed' WHERE id % 10 = 0; INSERT INTO app.measurements VALUES (5000, '2024-05-05', 'new')")
        migrator.cutoverHandle.request()
        _ = try await run.value
        let copied = try await Fingerprint.of(target, database: targetDatabase)
        let original = try await Fingerprint.of(source, database: sourceDatabase)
        for table in ["app.measurements_2024", "app.measurements_default", "public.items"] {
            #expect(copied.tables[table] == original.tables[table], "content of \(table)")
        }
        #expect(copied.tables["app.measurements_2023"] == nil)
    }
}
