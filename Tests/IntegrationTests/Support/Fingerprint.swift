import Foundation
import PostgresClient

/// What a database holds, by content: every table's row count and a checksum
/// of every row (order-independent), sequence states and large objects.
/// Two databases with equal fingerprints hold the same data.
struct Fingerprint: Equatable, CustomStringConvertible {
    var tables: [String: String]
    var sequences: [String: String]
    var largeObjects: [String: String]

    var description: String {
        (tables.sorted { $0.key < $1.key }.map { "table \($0.key): \($0.value)" }
            + sequences.sorted { $0.key < $1.key }.map { "sequence \($0.key): \($0.value)" }
            + largeObjects.sorted { $0.key < $1.key }.map { "large object \($0.key): \($0.value)" })
            .joined(separator: "\n")
    }

    /// What differs from `other`, one line per object, for failure messages.
    func differences(from other: Fingerprint) -> [String] {
        func diff(_ kind: String, _ mine: [String: String], _ theirs: [String: String]) -> [String] {
            Set(mine.keys).union(theirs.keys).sorted().compactMap { key in
                mine[key] == theirs[key] ? nil : "\(kind) \(key): \(mine[key] ?? "missing") vs \(theirs[key] ?? "missing")"
            }
        }
        return diff("table", tables, other.tables) + diff("sequence", sequences, other.sequences)
            + diff("large object", largeObjects, other.largeObjects)
    }

    /// Session settings pinned so that equal data prints (and so hashes) equally on both sides.
    static let pinnedSettings = """
        SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres';
        SET extra_float_digits = 3; SET bytea_output = 'hex'
        """

    /// `materializedViews: false` leaves them out: their content is what the last
    /// REFRESH computed, which on a target restored during writes is newer than the source's.
    static func of(_ connection: Connection, materializedViews: Bool = true) async throws -> Fingerprint {
        try await connection.execute(pinnedSettings)
        let relations = try await connection.query(
            """
            SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind, c.relispopulated::text
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'S', \(materializedViews ? "'m'" : "'r'")) AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
            ORDER BY 1, 2
            """)
        var tables: [String: String] = [:]
        var sequences: [String: String] = [:]
        for row in relations.rows {
            let name = row[0]!
            if row[2] == "false" {
                tables[name] = "unpopulated"
            } else if row[1] == "S" {
                sequences[name] = try await connection.query("SELECT last_value::text || '/' || is_called::text FROM \(name)").rows[0][0]
            } else {
                let result = try await connection.query(
                    "SELECT count(*)::text || ':' || coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '-') FROM ONLY \(name) t"
                )
                tables[name] = result.rows[0][0]
            }
        }
        var largeObjects: [String: String] = [:]
        for row in try await connection.query(
            "SELECT oid::text, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY oid"
        ).rows {
            largeObjects[row[0]!] = row[1]
        }
        return Fingerprint(tables: tables, sequences: sequences, largeObjects: largeObjects)
    }

    static func of(_ cluster: TestCluster, database: String, materializedViews: Bool = true) async throws -> Fingerprint {
        let connection = try await cluster.connect(database: database)
        defer { Task { await connection.close() } }
        return try await of(connection, materializedViews: materializedViews)
    }
}

/// `pg_dump --schema-only` of a database, without the lines that differ between any two dumps.
func schemaDump(_ cluster: TestCluster, database: String) async throws -> String {
    let result = try await TestCluster.run(
        try await TestCluster.clientBinary("pg_dump"),
        ["--schema-only", "--dbname=host=127.0.0.1 port=\(cluster.port) user=\(TestCluster.superuser) dbname=\(database)"],
        environment: ["PGPASSWORD": TestCluster.superuserPassword])
    guard result.status == 0 else { throw TestSupportError("pg_dump --schema-only failed: \(result.output)") }
    return result.output.split(separator: "\n", omittingEmptySubsequences: true)
        .filter { !$0.hasPrefix("--") && !$0.hasPrefix("\\restrict") && !$0.hasPrefix("\\unrestrict") }
        .joined(separator: "\n")
}

/// The fixture database every full-migration test copies (Tests/Fixtures/sample.sql).
let sampleSQLPath: String = {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/sample.sql").path
}()
