import Foundation
import PGDBMigrator
import PostgresClient
import Synchronization
import Testing

/// The native engine's own promises: split tables arrive whole, each row once,
/// even while the source keeps rewriting them, because every part reads the
/// same snapshot.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct NativeCopyTests {
    @Test("tables split by key ranges and by block ranges copy exactly while their rows are rewritten")
    func splitTablesUnderChurn() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await source.createDatabase(SharedClusters.uniqueName("split"))
        let setup = try await source.connect(database: sourceDatabase)
        try await setup.execute(
            """
            CREATE TABLE keyed (id bigint PRIMARY KEY, v text NOT NULL, n int);
            INSERT INTO keyed SELECT g, repeat(md5(g::text), 3), g % 97 FROM generate_series(1, 60000) g;
            CREATE INDEX keyed_n_idx ON keyed (n);
            CREATE TABLE heap_only (a int, b text);  -- no key at all, duplicate rows
            INSERT INTO heap_only SELECT g % 5000, repeat(md5((g % 5000)::text), 3) FROM generate_series(1, 60000) g;
            CREATE TABLE small (id int PRIMARY KEY);
            INSERT INTO small VALUES (1), (2), (3);
            -- Types whose binary form carries server-specific OIDs: copied as text, or they would fail or change.
            CREATE TYPE mood AS ENUM ('calm', 'busy');
            CREATE TABLE refs (id int PRIMARY KEY, r regclass, ty regtype, moods mood[]);
            INSERT INTO refs VALUES (1, 'keyed', 'mood', '{calm,busy}'), (2, 'heap_only', 'int4', NULL);
            """)
        await setup.close()

        // Rewrites every row again and again without changing content: each UPDATE
        // moves rows to other blocks, so a copy outside one snapshot would see
        // some rows twice and miss others.
        let churn = try await source.connect(database: sourceDatabase)
        let rewrites = Mutex(0)
        let writer = Task {
            var round = 0
            while !Task.isCancelled {
                do {
                    try await churn.execute(
                        "UPDATE keyed SET v = v WHERE id % 20 = \(round % 20); UPDATE heap_only SET b = b WHERE a % 20 = \(round % 20)")
                } catch { break }
                round += 1
                rewrites.withLock { $0 = round }
            }
        }
        while rewrites.withLock({ $0 }) < 2 { try await Task.sleep(for: .milliseconds(20)) }

        let events = EventLog()
        let targetDatabase = SharedClusters.uniqueName("split_copy")
        let outcome = try await OfflineMigrationTests.migrate(source: sourceDatabase, target: targetDatabase, events: events) {
            $0.copyMethod = .native
            $0.jobs = 3
            $0.splitTablesLargerThan = 512 * 1024
            $0.verify.mode = .off  // compared below, once the writer has stopped
        }
        let rewritesDuringRun = rewrites.withLock { $0 }
        writer.cancel()
        _ = await writer.value
        await churn.close()

        #expect(outcome.warnings.isEmpty)
        #expect(rewritesDuringRun > 4, "the source was not being rewritten during the copy")
        let expected = try await Fingerprint.of(source, database: sourceDatabase)
        let actual = try await Fingerprint.of(target, database: targetDatabase)
        #expect(actual.tables["public.keyed"]?.hasPrefix("60000:") == true)
        #expect(actual.tables["public.heap_only"]?.hasPrefix("60000:") == true)
        #expect(actual == expected, "\(actual.differences(from: expected))")
        #expect(try await schemaDump(target, database: targetDatabase) == schemaDump(source, database: sourceDatabase))

        // Both big tables went in parts, the small one whole; indexes were built by the engine.
        let copied = events.all.filter { $0.message.hasPrefix("copied \"public\".") }
        func parts(_ table: String) -> Int? {
            guard case .int(let count)? = copied.first(where: { $0.detail["table"] == .string(table) })?.detail["parts"] else { return nil }
            return count
        }
        #expect((parts("\"public\".\"keyed\"") ?? 0) > 1)
        #expect((parts("\"public\".\"heap_only\"") ?? 0) > 1)
        #expect(parts("\"public\".\"small\"") == 1)
        #expect(copied.first { $0.detail["table"] == .string("\"public\".\"refs\"") }?.detail["format"] == .string("text"))
        #expect(copied.first { $0.detail["table"] == .string("\"public\".\"small\"") }?.detail["format"] == .string("binary"))
        #expect(events.all.contains { $0.message.hasPrefix("built \"keyed_n_idx\"") })
    }

    @Test("text COPY does not depend on the servers' DateStyle, IntervalStyle or float output settings")
    func textFormatsPinned() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await source.createDatabase(SharedClusters.uniqueName("styles"))
        let setup = try await source.connect(database: sourceDatabase)
        try await setup.execute(
            """
            CREATE TYPE kind AS ENUM ('a', 'b');  -- forces text COPY for the table
            CREATE TABLE dated (id int PRIMARY KEY, k kind, d date, ts timestamp, i interval, f float8);
            INSERT INTO dated VALUES (1, 'a', '2020-01-02', '2020-01-02 03:04:05.678', '1 day 02:03:04', 0.1 + 0.2),
                                     (2, 'b', '1999-12-31', '1999-12-31 23:59:59', '-3 months', 1e-300);
            ALTER DATABASE \(SQL.identifier(sourceDatabase)) SET datestyle = 'SQL, DMY';
            ALTER DATABASE \(SQL.identifier(sourceDatabase)) SET intervalstyle = 'sql_standard';
            ALTER DATABASE \(SQL.identifier(sourceDatabase)) SET extra_float_digits = -3;
            """)
        let targetDatabase = SharedClusters.uniqueName("styles_copy")
        let outcome = try await OfflineMigrationTests.migrate(source: sourceDatabase, target: targetDatabase) { $0.copyMethod = .native }
        #expect(outcome.verifyReport?.matches == true, "\(outcome.verifyReport?.problems ?? [])")
        let expected = try await Fingerprint.of(source, database: sourceDatabase)
        let actual = try await Fingerprint.of(target, database: targetDatabase)
        #expect(actual == expected, "\(actual.differences(from: expected))")
    }

    @Test("--json: a progress event every two seconds, and one per table part in flight; people see the parts folded into one line")
    func jsonProgress() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await ResumeTests.source()
        let relay = try TCPRelay(to: target.port, bytesPerSecond: 2_000_000)  // a copy of several seconds
        defer { relay.stop() }
        let result = try await CLI.run([
            "--json", "--verify", "off", "--source", source.url(database: sourceDatabase),
            "--target", ResumeTests.url(port: relay.port, database: SharedClusters.uniqueName("json_progress")),
            "--state-dir", ResumeTests.stateDirectory(),
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let objects = try result.stdout.split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
        let overall = objects.filter { $0["kind"] as? String == "copyProgress" }.compactMap { $0["detail"] as? [String: Any] }
        let perTable = objects.filter { $0["kind"] as? String == "partProgress" }.compactMap { $0["detail"] as? [String: Any] }
        #expect(objects.allSatisfy { $0["kind"] != nil }, "every event says its kind")
        #expect(overall.count >= 2, "\(overall)")
        #expect(overall.contains { ($0["bytes"] as? Int ?? 0) > 0 && $0["eta_seconds"] != nil && $0["bytes_per_second"] != nil })
        #expect(!perTable.isEmpty)
        #expect(perTable.allSatisfy { ($0["table"] as? String)?.hasPrefix("\"public\".\"t") == true && $0["bytes"] is Int })

        // For people: the overall line names the parts in flight; the per-part events are not printed.
        let forPeople = try await CLI.run([
            "--verify", "off", "--source", source.url(database: sourceDatabase),
            "--target", ResumeTests.url(port: relay.port, database: SharedClusters.uniqueName("log_progress")),
            "--state-dir", ResumeTests.stateDirectory(),
        ])
        #expect(forPeople.status == 0, "\(forPeople.stderr)")
        #expect(forPeople.stderr.contains("copy progress: ") && forPeople.stderr.contains("; copying \"public\".\"t"))
        #expect(!forPeople.stderr.contains("stage=Restore copying \"public\"."), "per-part events are for programs")
    }
}
