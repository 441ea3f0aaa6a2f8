import Foundation
import PostgresClient
import Testing

@testable import PGDBMigrator

/// `--mode verify` against real servers: it passes on equal databases and catches each kind of difference.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct VerifyTests {
    /// A migrated pair: the sample source and an offline copy of it (itself verified strictly).
    static func migratedPair() async throws -> (source: String, target: String) {
        let source = try await OfflineMigrationTests.sampleSource()
        let target = SharedClusters.uniqueName("verify_copy")
        let outcome = try await OfflineMigrationTests.migrate(source: source, target: target)
        #expect(outcome.verifyReport?.matches == true)
        return (source, target)
    }

    static func verify(_ pair: (source: String, target: String), _ adjust: (inout MigrationConfig) -> Void = { _ in }) async throws
        -> VerifyReport
    {
        let (source, target) = try await SharedClusters.get()
        var config = MigrationConfig(
            mode: .verify, source: try source.connectionString(database: pair.source),
            target: try target.connectionString(database: pair.target), jobs: 2)
        adjust(&config)
        return try await Migrator(config: config).run().verifyReport!
    }

    static func onTarget(_ database: String, _ sql: String) async throws {
        let (_, target) = try await SharedClusters.get()
        let connection = try await target.connect(database: database)
        try await connection.execute(sql)
        await connection.close()
    }

    @Test("equal databases pass; each kind of difference is caught and named")
    func differences() async throws {
        let pair = try await Self.migratedPair()
        let clean = try await Self.verify(pair)
        #expect(clean.matches, "\(clean.problems)")
        #expect(clean.tables.count >= 9)

        // One character changed: every count still equal.
        try await Self.onTarget(
            pair.target,
            "UPDATE inventory.products SET name = name || 'x' WHERE id = 7; UPDATE inventory.products SET name = left(name, -1) || 'y' WHERE id = 7"
        )
        let changed = try await Self.verify(pair) { $0.verify.showRows = 5 }
        #expect(!changed.matches)
        let products = changed.tables.first { $0.table == "inventory.products" }
        #expect(products?.matches == false && products?.sourceRows == products?.targetRows)
        #expect(products?.differingRows == ["key (7): content differs"])
        #expect(changed.tables.filter { !$0.matches }.count == 1)

        // A missing row, an extra row, a missing table, a sequence behind, a missing index.
        try await Self.onTarget(
            pair.target,
            """
            DELETE FROM "Audit Log".events WHERE ctid = (SELECT min(ctid) FROM "Audit Log".events);
            INSERT INTO public.documents (id, title) VALUES (424242, 'extra');
            DROP TABLE inventory.stock_movements_default;
            SELECT setval('public.invoice_no_seq', 1000, false);
            DROP INDEX sales.orders_pending_idx;
            """)
        let broken = try await Self.verify(pair) { $0.verify.showRows = 10 }
        let problems = broken.problems.joined(separator: "\n")
        #expect(problems.contains("table \"Audit Log\".events differs"))
        #expect(problems.contains("table public.documents differs"))
        #expect(broken.tables.first { $0.table == "public.documents" }?.differingRows == ["key (424242): only on the target"])
        #expect(broken.missingOnTarget == ["inventory.stock_movements_default"])
        #expect(broken.sequencesBehind.map(\.sequence) == ["public.invoice_no_seq"])
        #expect(problems.contains("schema of sales.orders: missing on the target: index CREATE INDEX orders_pending_idx"), "\(problems)")
    }

    @Test(
        "schemas compare by meaning: other search_path and DateStyle on each side are no difference; a changed default, type, collation or check is"
    )
    func schemaMeaning() async throws {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        let source = try await OnlinePreflightTests.smallSource(
            """
            CREATE SCHEMA s; CREATE TYPE s.mood AS ENUM ('ok', 'sad');
            CREATE TABLE public.feelings (
                id int PRIMARY KEY, m s.mood NOT NULL DEFAULT 'ok', note text COLLATE "C" CHECK (note <> ''),
                on_day date DEFAULT '2024-01-02', score int DEFAULT 0, n int GENERATED ALWAYS AS (score * 2) STORED);
            CREATE INDEX feelings_not_sad ON public.feelings (id) WHERE m <> 'sad';
            INSERT INTO public.feelings (id, m, note, on_day) SELECT g, 'ok', 'n', '2024-01-01' FROM generate_series(1, 20) g;
            CREATE SEQUENCE public.countdown INCREMENT BY -1 START WITH -1 MAXVALUE -1;
            SELECT nextval('public.countdown'), nextval('public.countdown');
            """)
        let sourceAdmin = try await sourceCluster.connect()
        try await sourceAdmin.execute("ALTER DATABASE \(SQL.identifier(source)) SET search_path = public, s")
        let target = SharedClusters.uniqueName("meaning")
        let outcome = try await OfflineMigrationTests.migrate(source: source, target: target)
        #expect(outcome.verifyReport?.matches == true, "\(outcome.verifyReport?.problems ?? [])")
        let targetAdmin = try await targetCluster.connect()
        try await targetAdmin.execute(
            "ALTER DATABASE \(SQL.identifier(target)) SET search_path = pg_catalog; ALTER DATABASE \(SQL.identifier(target)) SET DateStyle = 'German'"
        )
        let pair = (source: source, target: target)
        let clean = try await Self.verify(pair)
        #expect(clean.matches, "\(clean.problems)")

        try await Self.onTarget(
            target,
            """
            SET search_path = public;
            ALTER TABLE feelings ALTER COLUMN on_day SET DEFAULT '2024-01-03';
            ALTER TABLE feelings ALTER COLUMN note TYPE text COLLATE "POSIX";
            ALTER TABLE feelings DROP CONSTRAINT feelings_note_check, ADD CONSTRAINT feelings_note_check CHECK (note <> 'x');
            ALTER TABLE feelings ALTER COLUMN id TYPE bigint;
            SELECT setval('public.countdown', -1);
            """)
        let broken = try await Self.verify(pair)
        let differences = broken.schemaDifferences["public.feelings"] ?? []
        for expected in [
            "column on_day date DEFAULT '2024-01-03'::date", "column note text COLLATE \"POSIX\"",
            "constraint feelings_note_check CHECK ((note <> 'x'::text))", "column id bigint NOT NULL",
        ] {
            #expect(differences.contains("only on the target: \(expected)"), "\(expected): \(differences)")
        }
        #expect(broken.sequencesBehind.map(\.sequence) == ["public.countdown"], "a sequence counting down is behind when higher")
        try await Self.onTarget(target, "SELECT setval('public.countdown', -7)")
        #expect(try await Self.verify(pair).sequencesBehind.isEmpty, "a sequence counting down is ahead when lower")
    }

    @Test("rows of plain types are hashed value by value, and a microsecond or a letter's case still differs")
    func valueHashing() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource(
            """
            CREATE TABLE public.events (id int PRIMARY KEY, note text, at timestamptz, flag bool, ref uuid, raw bytea);
            INSERT INTO public.events SELECT g, 'note ' || g, timestamptz '2024-01-01' + g * interval '1 minute', g % 2 = 0,
                md5(g::text)::uuid, decode(md5(g::text), 'hex') FROM generate_series(1, 500) g;
            CREATE TABLE public.prices (id int PRIMARY KEY, amount numeric);
            INSERT INTO public.prices VALUES (1, 1.00);
            """)
        let targetDatabase = SharedClusters.uniqueName("hashed")
        let outcome = try await OfflineMigrationTests.migrate(source: database, target: targetDatabase)
        #expect(outcome.verifyReport?.matches == true)
        let sourceSession = try await source.connect(database: database)
        let targetSession = try await target.connect(database: targetDatabase)
        let hashed = try await Verifier.valueHashed(
            [QualifiedName(schema: "public", name: "events"), QualifiedName(schema: "public", name: "prices")],
            source: sourceSession, targetVersion: await targetSession.serverVersion)
        #expect(hashed == [QualifiedName(schema: "public", name: "events")], "numeric keeps the text: 1.0 = 1.00")
        let pair = (source: database, target: targetDatabase)
        let changes = [
            (
                "UPDATE public.events SET at = at + interval '1 microsecond' WHERE id = 7",
                "UPDATE public.events SET at = at - interval '1 microsecond' WHERE id = 7"
            ),
            ("UPDATE public.events SET note = upper(note) WHERE id = 7", "UPDATE public.events SET note = 'note 7' WHERE id = 7"),
            (
                "UPDATE public.events SET raw = raw || '\\x00'::bytea WHERE id = 7",
                "UPDATE public.events SET raw = decode(md5('7'), 'hex') WHERE id = 7"
            ),
            ("UPDATE public.prices SET amount = 1.0 WHERE id = 1", "UPDATE public.prices SET amount = 1.00 WHERE id = 1"),
        ]
        for (change, undo) in changes {
            try await targetSession.execute(change)
            #expect(!(try await Self.verify(pair).matches), "\(change) went unnoticed")
            try await targetSession.execute(undo)
            #expect(try await Self.verify(pair).matches, "after \(undo)")
        }
    }

    @Test("filters limit what is compared")
    func filters() async throws {
        let pair = try await Self.migratedPair()
        try await Self.onTarget(pair.target, "UPDATE inventory.products SET name = name || '!' WHERE id = 3")
        #expect(!(try await Self.verify(pair).matches))
        #expect(try await Self.verify(pair) { $0.filter = ObjectFilter(excludeSchemas: ["inventory"]) }.matches)
        #expect(try await Self.verify(pair) { $0.filter = ObjectFilter(excludeTables: ["inventory.products"]) }.matches)
        #expect(try await Self.verify(pair) { $0.filter = ObjectFilter(schemas: ["sales"]) }.matches)
        #expect(!(try await Self.verify(pair) { $0.filter = ObjectFilter(tables: ["inventory.products"]) }.matches))
    }

    @Test("big tables are checked in parts: key ranges, or hash buckets without a key; the differing part is named")
    func parts() async throws {
        let pair = try await Self.migratedPair()
        try await Self.onTarget(
            pair.target,
            """
            UPDATE public.customers SET city = 'Nowhere' WHERE id = 1500;
            INSERT INTO "Audit Log".events SELECT * FROM "Audit Log".events LIMIT 1;
            """)
        let report = try await Self.verify(pair) {
            $0.verify.splitBytes = 16 * 1024
            $0.verify.showRows = 3
        }
        let customers = report.tables.first { $0.table == "public.customers" }
        #expect(customers?.differingRanges.count == 1)
        #expect(customers?.differingRanges.first?.hasPrefix("id in [") == true, "\(customers?.differingRanges ?? [])")
        #expect(customers?.differingRows == ["key (1500): content differs"])
        let events = report.tables.first { $0.table == "\"Audit Log\".events" }
        #expect(events?.differingRanges.first?.hasPrefix("hash bucket") == true, "\(events?.differingRanges ?? [])")
        #expect(events?.targetRows == (events?.sourceRows ?? 0) + 1)
        #expect(events?.differingRows.first?.contains("1 on the source, 2 on the target") == true, "\(events?.differingRows ?? [])")
    }

    @Test("the CLI exits 1 with a summary on a mismatch, 0 on a match, and --json gives the report")
    func cli() async throws {
        let (source, target) = try await SharedClusters.get()
        let pair = try await Self.migratedPair()
        let arguments = ["--mode", "verify", "--source", source.url(database: pair.source), "--target", target.url(database: pair.target)]
        let ok = try await CLI.run(arguments)
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(ok.stderr.contains("VERIFY match"))

        try await Self.onTarget(pair.target, "DELETE FROM public.documents WHERE id = (SELECT max(id) FROM public.documents)")
        let bad = try await CLI.run(arguments + ["--json"])
        #expect(bad.status == 1)
        let lines = bad.stdout.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        let report = lines.compactMap { $0["report"] as? [String: Any] }.first
        let tables = report?["tables"] as? [[String: Any]] ?? []
        let documents = tables.first { $0["table"] as? String == "public.documents" }
        #expect(documents?["matches"] as? Bool == false)
        #expect(bad.stderr.contains("source and target differ"))
    }
}
