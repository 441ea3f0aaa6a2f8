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
