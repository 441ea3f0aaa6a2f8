import Foundation
import Logging
import PostgresClient
import Testing

@testable import PGDBMigrator

/// Offline verify riding along with the native copy: the source read once, the target read back.
@Suite(.timeLimit(.minutes(5)))
struct StreamVerifyTests {
    static let setup = """
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE TABLE small_keyed (id int PRIMARY KEY, v text, m mood);
        INSERT INTO small_keyed SELECT g, 'row ' || g, (ARRAY['sad', 'ok', 'happy']::mood[])[g % 3 + 1] FROM generate_series(1, 500) g;
        CREATE TABLE small_heap (v text, n numeric);
        INSERT INTO small_heap SELECT md5(g::text), g / 7.0 FROM generate_series(1, 500) g;
        CREATE TABLE big_keyed (id bigint PRIMARY KEY, v text);
        INSERT INTO big_keyed SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 20000) g;
        CREATE TABLE big_heap (v text, m mood);
        INSERT INTO big_heap SELECT repeat(md5(g::text), 4), 'ok' FROM generate_series(1, 20000) g;
        """

    /// ``sequentialScans(_:database:)`` once every one of `tables` was scanned again since `before`, and a second later:
    /// the statistics land as the sessions end, some after the run has returned.
    static func sequentialScans(_ tables: [String], since before: [String: Int], database: String) async throws -> [String: Int] {
        for _ in 0..<50 {
            let after = try await sequentialScans(tables, database: database)
            if tables.allSatisfy({ (after[$0] ?? 0) > (before[$0] ?? 0) }) { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        try await Task.sleep(for: .seconds(1))
        return try await sequentialScans(tables, database: database)
    }

    /// Sequential scans of `tables` on the source, read in a fresh transaction (statistics are flushed as sessions end).
    static func sequentialScans(_ tables: [String], database: String) async throws -> [String: Int] {
        let (source, _) = try await SharedClusters.get()
        let connection = try await source.connect(database: database)
        defer { Task { await connection.close() } }
        let rows = try await connection.query(
            "SELECT relname, seq_scan::text FROM pg_stat_user_tables WHERE relname = ANY($1::text[])", [SQL.textArray(tables)]
        ).rows
        return Dictionary(uniqueKeysWithValues: rows.map { ($0[0]!, Int($0[1]!)!) })
    }

    @Test(
        "every table is verified as it is copied, split or not, binary or text; the source is not read a second time (server: it is; auto: the target sums the server's hash of values where it can)",
        arguments: VerifySettings.Method.allCases)
    func ridesAlong(method: VerifySettings.Method) async throws {
        let source = try await OnlinePreflightTests.smallSource(Self.setup)
        let unsplit = ["small_keyed", "small_heap", "items"]
        let before = try await Self.sequentialScans(unsplit, database: source)
        let events = EventLog()
        let outcome = try await OfflineMigrationTests.migrate(source: source, target: SharedClusters.uniqueName("ridden"), events: events) {
            $0.splitTablesLargerThan = 512 * 1024
            $0.jobs = 2
            $0.verify.method = method
        }
        #expect(outcome.verifyReport?.matches == true, "\(outcome.verifyReport?.problems ?? [])")
        #expect(outcome.verifyReport?.tables.count == 5)
        let summary = events.all.first { $0.message.contains("verified as they were copied") }
        // auto: the tables of integers and text (big_keyed, items) are summed as the server hashes their values,
        // the target's sum taken in its server.
        let expected: (streamed: Int, summed: Int, inServer: Int)? = [.stream: (5, 0, 0), .auto: (5, 2, 0)][method]
        #expect(summary?.detail["streamed"] == expected.map { .int($0.streamed) }, "\(events.all.map(\.message))")
        #expect(summary?.detail["summed_in_target"] == expected.map { .int($0.summed) })
        #expect(summary?.detail["in_server"] == expected.map { .int($0.inServer) })
        let copied = events.all.filter { $0.message.hasPrefix("copied ") && $0.message.contains("big_") }
        #expect(copied.count == 2 && copied.allSatisfy { $0.message.contains(" parts") }, "\(events.all.map(\.message))")
        #expect(copied.contains { $0.message.contains("big_keyed") && $0.message.contains("binary") })

        // One COPY per unsplit table, and no verify query after it; verified in the servers, a second scan.
        let after = try await Self.sequentialScans(unsplit, since: before, database: source)
        let secondRead: Set<String> = [.stream: [], .auto: []][method] ?? Set(unsplit)
        for table in unsplit {
            let scans = secondRead.contains(table) ? 2 : 1
            #expect((after[table] ?? 0) - (before[table] ?? 0) == scans, "\(table): \(before[table] ?? -1) → \(after[table] ?? -1)")
        }
    }

    @Test("a read-back digest catches a changed value with the same row count, a lost row and a row twice, in text and binary")
    func digestsCatchDifferences() async throws {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        let database = SharedClusters.uniqueName("digest")
        let table = "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric);"
        let sourceDatabase = try await sourceCluster.createDatabase(database)
        let targetDatabase = try await targetCluster.createDatabase(database)
        let source = try await sourceCluster.connect(database: sourceDatabase)
        let target = try await targetCluster.connect(database: targetDatabase)
        try await source.execute(table + "INSERT INTO t SELECT g, 'v' || g, g / 3.0 FROM generate_series(1, 1000) g")
        // The same rows in another physical order.
        try await target.execute(table + "INSERT INTO t SELECT g, 'v' || g, g / 3.0 FROM generate_series(1000, 1, -1) g")
        let catalog = try await TableCatalog.tables([QualifiedName(schema: "public", name: "t")], on: source)[0]
        for session in [source, target] { try await session.pinTextFormats() }
        for binary in [false, true] {
            let digest = { (session: Connection) in try await StreamVerification.digest(of: catalog, binary: binary, on: session) }
            let expected = try await digest(source)
            #expect(expected.rowCount == 1000)
            #expect(try await digest(target) == expected, "binary: \(binary)")
            try await target.execute("BEGIN; UPDATE t SET n = n + 0.000001 WHERE id = 500")
            #expect(try await digest(target) != expected)
            try await target.execute("ROLLBACK; BEGIN; DELETE FROM t WHERE id = 1")
            #expect(try await digest(target) != expected)
            try await target.execute("ALTER TABLE t DROP CONSTRAINT t_pkey; UPDATE t SET id = 3, v = 'v3', n = 1 WHERE id = 2")
            let twice = try await digest(target)
            #expect(twice != expected && twice.rowCount == 999)
            try await target.execute("ROLLBACK")
        }
    }

    @Test(
        "PostgreSQL's row hash taken from a binary COPY equals the server's, for every kind of value; a changed value, a lost row, a row twice and two rows swapping a value change the sum"
    )
    func serverRowHash() async throws {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        let database = SharedClusters.uniqueName("rowhash")
        let table = """
            CREATE TABLE t (id int PRIMARY KEY, s smallint, b bigint, f boolean, v text, c varchar(80), d date, ts timestamp,
                            tz timestamptz, u uuid, y bytea, p char(12), g int GENERATED ALWAYS AS (id * 2) STORED);
            """
        // Text of every length from 0 to 40 (each lookup3 tail, whole blocks), long and non-ASCII text, negative and
        // extreme numbers, NULLs, infinities.
        let rows = """
            INSERT INTO t (id, s, b, f, v, c, d, ts, tz, u, y, p)
            SELECT g, (g * 37 % 65536 - 32768)::smallint, CASE g % 4 WHEN 0 THEN -g * 1234567890123 WHEN 1 THEN 9223372036854775807 - g
                       WHEN 2 THEN -9223372036854775807 + g ELSE g END,
                   CASE g % 3 WHEN 0 THEN true WHEN 1 THEN false END,
                   CASE WHEN g % 50 = 7 THEN NULL WHEN g % 50 = 8 THEN repeat('Zürich ∑ ', 300) ELSE left(repeat(md5(g::text), 2), g % 41) END,
                   left('varchar ' || g || ' ünï', g % 20), date '2000-01-01' + (g * 97 - 5000),
                   CASE WHEN g = 3 THEN 'infinity' ELSE timestamp '1970-01-01' + g * interval '1 day 1.000001 s' END,
                   CASE WHEN g = 4 THEN '-infinity' ELSE timestamptz '1999-12-31 23:59:59.999999+00' - g * interval '17 minutes' END,
                   md5(g::text)::uuid, CASE WHEN g % 9 = 0 THEN NULL ELSE decode(left(md5(g::text) || md5((g+1)::text), g % 33 * 2), 'hex') END,
                   CASE WHEN g % 11 = 0 THEN NULL ELSE left(' ü ' || md5(g::text), g % 13) END
            FROM generate_series(1, 2000) g
            """
        let source = try await sourceCluster.connect(database: try await sourceCluster.createDatabase(database))
        let target = try await targetCluster.connect(database: try await targetCluster.createDatabase(database))
        try await source.execute(table + rows)
        try await target.execute(table + rows)
        let name = QualifiedName(schema: "public", name: "t")
        let catalog = try await TableCatalog.tables([name], on: source)[0]
        let kinds = try #require(try await Verifier.valueHashKinds([name], source: source, targetVersion: 150_000)[name])
        #expect(kinds == [.int32, .int16, .int64, .bool, .bytes, .bytes, .int32, .int64, .int64, .bytes, .bytes, .blankPadded])
        // bpchar without a length keeps trailing blanks its equality ignores: such a table is compared by its text.
        try await source.execute("CREATE TABLE unpadded (id int, p bpchar)")
        let unpadded = QualifiedName(schema: "public", name: "unpadded")
        #expect(try await Verifier.valueHashKinds([unpadded], source: source, targetVersion: 150_000)[unpadded] == nil)
        try await source.pinTextFormats()
        try await source.beginCopyOut("COPY \(catalog.copyTarget) TO STDOUT WITH (FORMAT binary)")
        var digest = CopyStreamDigest(hashingValuesOf: kinds)
        // Batches of 1 kB cut values anywhere.
        while let batch = try await source.readCopyBatch(minimumBytes: 1) {
            for start in stride(from: 0, to: batch.count, by: 1000) {
                try digest.consume(Array(batch[start..<min(batch.count, start + 1000)]))
            }
        }
        let streamed = try digest.finished()
        let inServer = { (session: Connection) -> TableDigest in
            let row = try await session.query(Verifier.rowSumSQL(catalog)).rows[0]
            return .values(PostgresRowSum(rows: Int(row[0]!)!, sum: Int128(row[1]!)!))
        }
        #expect(streamed.rowCount == 2000)
        #expect(streamed == (try await inServer(source)), "the server hashes the same rows differently")
        #expect(try await inServer(target) == streamed)
        for change in [
            "UPDATE t SET tz = tz + interval '1 microsecond' WHERE id = 500", "UPDATE t SET v = v || ' ' WHERE id = 8",
            "UPDATE t SET f = NOT f WHERE id = 9", "UPDATE t SET p = 'x' || p WHERE id = 14", "DELETE FROM t WHERE id = 1",
            "ALTER TABLE t DROP CONSTRAINT t_pkey; UPDATE t SET (id, s, b, f, v, c, d, ts, tz, u, y, p) = (SELECT id, s, b, f, v, c, d, ts, tz, u, y, p FROM t WHERE id = 2) WHERE id = 3",
        ] {
            try await target.execute("BEGIN; " + change)
            #expect(try await inServer(target) != streamed, "\(change)")
            try await target.execute("ROLLBACK")
        }
        // Two rows swap a value: hash_record_extended's fold is linear, so a plain sum of it misses such a swap for
        // about half of all pairs. The pair taken is one of those; both the copy's sum and verify's parts see it.
        let found = try await source.query(
            """
            SELECT x, y FROM generate_series(1, 50) x, generate_series(1, 50) y
            WHERE x < y AND hash_record_extended(ROW(1, x), 0)::numeric + hash_record_extended(ROW(2, y), 0)
                          = hash_record_extended(ROW(1, y), 0)::numeric + hash_record_extended(ROW(2, x), 0)
            LIMIT 1
            """
        ).rows
        let (x, y) = (try #require(found.first?[0].flatMap { Int($0) }), try #require(found.first?[1].flatMap { Int($0) }))
        try await source.execute("CREATE TABLE pair (id int, v int); INSERT INTO pair VALUES (1, \(x)), (2, \(y))")
        try await target.execute("CREATE TABLE pair (id int, v int); INSERT INTO pair VALUES (1, \(y)), (2, \(x))")
        let pair = try await TableCatalog.tables([QualifiedName(schema: "public", name: "pair")], on: source)[0]
        for sql in [
            Verifier.rowSumSQL(pair), Verifier.checksumSQL(Verifier.Part(table: pair, condition: "true", label: ""), hashingValues: true),
        ] {
            let (before, after) = (try await source.query(sql).rows, try await target.query(sql).rows)
            #expect(before != after, "\(sql): (1, \(x)), (2, \(y)) swapped unseen")
        }
    }

    @Test("digests that differ are examined again in the servers: a real difference is reported by range, a false alarm is a warning")
    func fallsBackToTheServers() async throws {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        let source = try await OnlinePreflightTests.smallSource()
        let target = SharedClusters.uniqueName("fallback")
        _ = try await OfflineMigrationTests.migrate(source: source, target: target)
        let catalog = try await sourceCluster.connect(database: source)
        let tables = try await TableSet.resolve(ObjectFilter(), on: catalog, stage: .verify)
        await catalog.close()
        let name = QualifiedName(schema: "public", name: "items")
        let disagreeing = [
            name: StreamVerification.TableResult(source: .rows(RowDigest(rows: 100, low: 1, high: 2)), target: .rows(RowDigest(rows: 100)))
        ]
        let verifier = { (events: EventLog) in
            Verifier(
                source: try sourceCluster.connectionString(database: source), target: try targetCluster.connectionString(database: target),
                tables: tables, jobs: 2, settings: VerifySettings(showRows: 3),
                events: EventEmitter(handler: events.record, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })),
                streamed: disagreeing)
        }
        let falseAlarm = EventLog()
        let equal = try await verifier(falseAlarm).run()
        #expect(equal.matches)
        #expect(falseAlarm.all.contains { $0.level == .warning && $0.message.contains("trusting the servers") })

        try await VerifyTests.onTarget(target, "UPDATE items SET v = 'changed' WHERE id = 42")
        let differs = try await verifier(EventLog()).run()
        #expect(!differs.matches)
        #expect(differs.tables.first { $0.table == "public.items" }?.differingRows == ["key (42): content differs"])
    }
}
