import Foundation
import PostgresClient
import Testing

@testable import PGDBMigrator

/// Relay apply (``RelayApplier``) against real servers: the tool streams the slot's changes into the target itself.
@Suite(.timeLimit(.minutes(5)))
struct RelayApplyTests {
    static let schema = """
        CREATE TABLE k (id int PRIMARY KEY, v text, big text); ALTER TABLE k ALTER COLUMN big SET STORAGE EXTERNAL;
        CREATE TABLE f (a int, b text); ALTER TABLE f REPLICA IDENTITY FULL;
        CREATE TABLE s (id serial PRIMARY KEY, v text);
        CREATE TABLE typed (id int PRIMARY KEY, n numeric, ts timestamptz, iv interval, b bytea, j jsonb, arr int[], d date);
        INSERT INTO f VALUES (1, NULL), (1, NULL), (2, 'x');
        """

    /// A source and a target database holding the same schema and rows, a publication of everything and a pgoutput slot.
    static func pair(_ prefix: String) async throws -> (source: String, target: String, slot: String) {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        let source = try await sourceCluster.createDatabase(SharedClusters.uniqueName(prefix))
        let target = try await targetCluster.createDatabase(SharedClusters.uniqueName(prefix + "_target"))
        let slot = SharedClusters.uniqueName("relay")
        try await sourceCluster.connect(database: source).execute(schema + "CREATE PUBLICATION p FOR ALL TABLES")
        try await targetCluster.connect(database: target).execute(schema)
        try await sourceCluster.connect(database: source).query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [slot])
        return (source, target, slot)
    }

    /// Collects the logical messages the applier reports.
    final class Messages: @unchecked Sendable {
        private let lock = NSLock()
        private var seen: [String] = []
        func record(_ prefix: String, _: LSN) { lock.withLock { seen.append(prefix) } }
        func contains(_ prefix: String) -> Bool { lock.withLock { seen.contains(prefix) } }
        var count: Int { lock.withLock { seen.count } }
    }

    static func applier(_ pair: (source: String, target: String, slot: String), messages: Messages) async throws -> RelayApplier {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        return RelayApplier(
            source: try sourceCluster.connectionString(database: pair.source),
            target: try targetCluster.connectionString(database: pair.target),
            slot: pair.slot, publication: "p", origin: "pgdm_" + pair.slot, statusInterval: .milliseconds(200),
            onMessage: messages.record)
    }

    /// Drops the test's slot once the walsender, which ends a moment after the apply's connection closed, let it go.
    static func dropSlot(_ slot: String, on source: Connection) async throws {
        for _ in 0..<100
        where try await source.scalar("SELECT active::text FROM pg_replication_slots WHERE slot_name = $1", [slot]) == "true" {
            try await Task.sleep(for: .milliseconds(50))
        }
        try await source.query("SELECT pg_drop_replication_slot($1)", [slot])
    }

    /// Emits a transactional marker on the source and waits until the applier has applied it.
    static func barrier(_ name: String, on source: Connection, messages: Messages) async throws {
        try await source.query("SELECT pg_logical_emit_message(true, $1, 'barrier')", [name])
        // One session applies one statement per round trip: under the whole suite's load a bulk change takes a while.
        for _ in 0..<1200 where !messages.contains(name) { try await Task.sleep(for: .milliseconds(100)) }
        #expect(messages.contains(name), "the applier never reached \(name)")
    }

    @Test("every change kind reaches the target by content, exactly once across a stop in the middle; the origin and slot follow")
    func appliesExactlyOnce() async throws {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        let pair = try await Self.pair("relay_all")
        let source = try await sourceCluster.connect(database: pair.source)
        let messages = Messages()
        let applier = try await Self.applier(pair, messages: messages)
        var running = Task { try await applier.run() }

        let big = String(repeating: "abcdefghij", count: 900)
        // One transaction each (a simple query of several statements is one transaction).
        for statement in [
            "INSERT INTO k SELECT g, 'v' || g, '\(big)' || g FROM generate_series(1, 50) g",
            "UPDATE k SET v = 'changed' WHERE id <= 10",
            "UPDATE k SET id = id + 1000 WHERE id BETWEEN 11 AND 15",
            "DELETE FROM k WHERE id BETWEEN 16 AND 20",
            "DELETE FROM f WHERE ctid = (SELECT min(ctid) FROM f WHERE a = 1)",
            "UPDATE f SET b = 'y' WHERE a = 2",
            "INSERT INTO s (v) SELECT 'row' FROM generate_series(1, 5)",
            """
            INSERT INTO typed VALUES (1, 1.50, '2024-02-29 12:34:56.789+02', '1 day 02:03:04', '\\x00ff', '{"a": [1, 2]}', '{1,NULL,3}',
                                      '2024-01-01')
            """,
            "BEGIN; INSERT INTO k VALUES (9999, 'rolled back', NULL); ROLLBACK",
        ] {
            try await source.execute(statement)
        }
        try await Self.barrier("first", on: source, messages: messages)
        // Stopped in the middle of a large transaction's apply, then started again: nothing lost, nothing twice.
        try await source.execute("INSERT INTO k SELECT g, 'bulk', NULL FROM generate_series(100000, 120000) g")
        try await Task.sleep(for: .milliseconds(300))
        running.cancel()
        _ = await running.result
        running = Task { try await applier.run() }
        for statement in [
            "TRUNCATE s RESTART IDENTITY", "INSERT INTO s (v) VALUES ('after truncate')",
            #"UPDATE typed SET n = 2.25, j = '{"b": null}' WHERE id = 1"#, "DELETE FROM k WHERE id >= 110000",
        ] {
            try await source.execute(statement)
        }
        try await Self.barrier("second", on: source, messages: messages)
        // The origin holds the target's durable position, and the slot is told it (and forgets no more).
        let target = try await targetCluster.connect(database: pair.target)
        let progress = try #require(
            try await target.scalar("SELECT pg_replication_origin_progress($1, true)::text", [applier.origin]).flatMap(LSN.init))
        var confirmed = LSN(0)
        for _ in 0..<100 where confirmed < progress {
            try await Task.sleep(for: .milliseconds(100))
            confirmed =
                try await source.scalar("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", [pair.slot])
                .flatMap(LSN.init) ?? LSN(0)
        }
        #expect(confirmed >= progress, "slot at \(confirmed), target durably at \(progress)")
        running.cancel()
        _ = await running.result

        let expected = try await Fingerprint.of(sourceCluster, database: pair.source)
        let actual = try await Fingerprint.of(targetCluster, database: pair.target)
        #expect(actual.tables == expected.tables, "\(actual.differences(from: expected))")
        let identical = "SELECT count(*) FROM f WHERE a = 1"
        let counts = (source: try await source.scalar(identical), target: try await target.scalar(identical))
        #expect(counts.source == "1" && counts.target == "1", "one of two identical rows deleted: \(counts)")
        #expect(try await target.scalar("SELECT id::text FROM s") == "1", "RESTART IDENTITY applied")
        try await Self.dropSlot(pair.slot, on: source)
        try await target.query("SELECT pg_replication_origin_drop($1)", [applier.origin])
    }

    @Test(
        "large transactions streamed before they commit: kept aside, applied whole at their commit in commit order, an aborted savepoint's changes and an aborted transaction never; across a restart"
    )
    func streamedTransactions() async throws {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        let pair = try await Self.pair("relay_streamed")
        let source = try await sourceCluster.connect(database: pair.source)
        let other = try await sourceCluster.connect(database: pair.source)
        let messages = Messages()
        var applier = try await Self.applier(pair, messages: messages)
        // The walsender streams any transaction past 64 kB of changes (the setting is the session's own).
        applier.source = applier.source.setting("options", to: "-c logical_decoding_work_mem=64kB")
        // Kept in a directory of the run's own, as online mode gives it (in the state directory); a killed run's
        // leftovers there go when the apply starts.
        let spoolDirectory = try TestCluster.makeDirectory(name: "relay-spool") + "/relay-transactions"
        try FileManager.default.createDirectory(atPath: spoolDirectory, withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: spoolDirectory + "/4711", contents: Data("left by a killed run".utf8)))
        applier.spoolDirectory = spoolDirectory
        let spools = { FileManager.default.fileExists(atPath: spoolDirectory) }
        var running = Task { [applier] in try await applier.run() }
        for _ in 0..<100 where FileManager.default.fileExists(atPath: spoolDirectory + "/4711") {
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(!FileManager.default.fileExists(atPath: spoolDirectory + "/4711"), "a killed run's leftovers go when the apply starts")

        // Streamed in blocks while another transaction commits in between: that one is applied first.
        try await source.execute(
            """
            BEGIN;
            INSERT INTO k SELECT g, 'kept', repeat('x', 200) FROM generate_series(1, 3000) g;
            SAVEPOINT a;
            INSERT INTO k SELECT g, 'rolled back', repeat('y', 200) FROM generate_series(3001, 6000) g;
            ROLLBACK TO SAVEPOINT a;
            UPDATE k SET v = 'updated' WHERE id % 10 = 0;
            SAVEPOINT b;
            DELETE FROM k WHERE id % 7 = 0;
            SAVEPOINT c;
            INSERT INTO f SELECT g, 'nested' FROM generate_series(1, 2000) g;
            RELEASE SAVEPOINT b;
            INSERT INTO k SELECT g, 'after', NULL FROM generate_series(7001, 9000) g
            """)
        try await other.execute("INSERT INTO k VALUES (50000, 'committed in between', NULL)")
        try await source.execute("COMMIT")
        // Streamed, then rolled back whole.
        try await source.execute(
            "BEGIN; INSERT INTO k SELECT g, 'never', repeat('z', 200) FROM generate_series(60001, 64000) g; ROLLBACK")
        try await Self.barrier("streamed", on: source, messages: messages)
        let streamedCount = try await source.scalar(
            "SELECT stream_txns::text FROM pg_stat_replication_slots WHERE slot_name = $1", [pair.slot])
        #expect(Int(streamedCount ?? "0") ?? 0 >= 2, "the source streamed them: \(streamedCount ?? "none")")

        // Stopped while a streamed transaction is half-way kept: the next attempt has it streamed again from its start.
        try await source.execute("BEGIN; INSERT INTO k SELECT g, 'across', repeat('w', 200) FROM generate_series(70001, 74000) g")
        try await Task.sleep(for: .milliseconds(500))
        running.cancel()
        _ = await running.result
        #expect(!spools(), "the stopped attempt's files are gone")
        running = Task { [applier] in try await applier.run() }
        try await source.execute("UPDATE k SET v = 'last' WHERE id > 70000; COMMIT")
        try await Self.barrier("restarted", on: source, messages: messages)
        running.cancel()
        _ = await running.result

        let expected = try await Fingerprint.of(sourceCluster, database: pair.source)
        let actual = try await Fingerprint.of(targetCluster, database: pair.target)
        #expect(actual.tables == expected.tables, "\(actual.differences(from: expected))")
        let target = try await targetCluster.connect(database: pair.target)
        #expect(try await target.scalar("SELECT count(*)::text FROM k WHERE v IN ('rolled back', 'never')") == "0")
        #expect(try await target.scalar("SELECT count(*)::text FROM k WHERE v = 'last'") == "4000")
        #expect(!spools(), "nothing left aside")
        try await Self.dropSlot(pair.slot, on: source)
        try await target.query("SELECT pg_replication_origin_drop($1)", [applier.origin])
    }

    @Test("an UPDATE or DELETE that finds no row on the target stops the apply with an error naming the table, never a skip")
    func missingRowIsAnError() async throws {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        let pair = try await Self.pair("relay_missing")
        let source = try await sourceCluster.connect(database: pair.source)
        let target = try await targetCluster.connect(database: pair.target)
        try await source.execute("INSERT INTO k VALUES (1, 'a', NULL), (2, 'b', NULL)")
        let messages = Messages()
        let applier = try await Self.applier(pair, messages: messages)
        let running = Task { try await applier.run() }
        try await Self.barrier("loaded", on: source, messages: messages)
        try await target.execute("DELETE FROM k WHERE id = 2")
        try await source.execute("UPDATE k SET v = 'lost?' WHERE id = 2; INSERT INTO k VALUES (3, 'after', NULL)")
        let error = await #expect(throws: MigrationError.self) { try await running.value }
        #expect(error?.message.contains("UPDATE of a row of public.k found no such row on the target") == true, "\(error?.message ?? "")")
        #expect(try await target.scalar("SELECT count(*) FROM k WHERE id = 3") == "0", "nothing after it was applied")
        try await Self.dropSlot(pair.slot, on: source)
        try await target.query("SELECT pg_replication_origin_drop($1)", [applier.origin])
    }

    @Test("the target, then the source, restart while writes go on: relay apply reconnects and loses nothing; idle, the slot catches up")
    func reconnectsAfterRestarts() async throws {
        let sourceCluster = try await TestCluster.start(name: "relay-restart-source")
        let targetCluster = try await TestCluster.start(name: "relay-restart-target")
        defer {
            sourceCluster.stop()
            targetCluster.stop()
        }
        for cluster in [sourceCluster, targetCluster] {
            try await cluster.connect().execute("CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL)")
        }
        try await sourceCluster.connect().execute("CREATE PUBLICATION p FOR ALL TABLES")
        try await sourceCluster.connect().query("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        let messages = Messages()
        let reconnects = Messages()
        let applier = RelayApplier(
            source: try sourceCluster.connectionString(database: "postgres"),
            target: try targetCluster.connectionString(database: "postgres"),
            slot: "s", publication: "p", origin: "pgdm_restart", statusInterval: .milliseconds(200), onMessage: messages.record,
            onReconnect: { reason, _ in reconnects.record(reason, LSN(0)) })
        let running = Task { try await applier.run() }
        // A writer that keeps going through both restarts (each statement on a fresh session: the source restarts too).
        let writing = Task {
            var written = 0
            while !Task.isCancelled {
                do {
                    let session = try await sourceCluster.connect()
                    for _ in 0..<20 {
                        written += 1
                        try await session.execute(
                            "INSERT INTO counter VALUES (\(written), 0); UPDATE counter SET n = n + 1 WHERE id = \(written / 2 + 1)")
                    }
                    await session.close()
                } catch {
                    written -= 1  // that insert may or may not have committed: the comparison by content decides
                    try? await Task.sleep(for: .milliseconds(200))
                }
            }
        }
        try await Task.sleep(for: .seconds(1))
        try await targetCluster.restart()
        try await Task.sleep(for: .seconds(2))
        try await sourceCluster.restart()
        try await Task.sleep(for: .seconds(2))
        writing.cancel()
        _ = await writing.result
        let source = try await sourceCluster.connect()
        try await Self.barrier("after restarts", on: source, messages: messages)
        #expect(reconnects.count >= 2, "reconnected after each restart")

        let expected = try await Fingerprint.of(sourceCluster, database: "postgres")
        let actual = try await Fingerprint.of(targetCluster, database: "postgres")
        #expect(actual.tables == expected.tables, "\(actual.differences(from: expected))")
        #expect(Int(try await source.scalar("SELECT count(*) FROM counter") ?? "0")! > 40)

        // Idle now: the slot is told the source's position, though nothing more is published.
        let now = try #require(try await source.scalar("SELECT pg_current_wal_lsn()::text").flatMap(LSN.init))
        var confirmed = LSN(0)
        for _ in 0..<100 where confirmed < now {
            try await Task.sleep(for: .milliseconds(100))
            confirmed =
                try await source.scalar("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 's'")
                .flatMap(LSN.init) ?? LSN(0)
        }
        #expect(confirmed >= now, "slot at \(confirmed), source at \(now)")
        running.cancel()
        _ = await running.result
    }
}

extension RelayApplyTests {
    /// The error `applier` stops with, or nil when it still runs after `seconds` (then it is stopped).
    static func failure(of applier: RelayApplier, within seconds: Int = 60) async -> Error? {
        let running = Task { try await applier.run() }
        let watchdog = Task {
            try await Task.sleep(for: .seconds(seconds))
            running.cancel()
        }
        defer { watchdog.cancel() }
        if case .failure(let error) = await running.result, !(error is CancellationError) { return error }
        return nil
    }

    @Test(
        "PostgreSQL 15 to 18, a login that may not set session_replication_role: a deferred constraint failing at COMMIT stops the apply, and after the fix that transaction is applied, never skipped"
    )
    func failedCommitIsNeverSkipped() async throws {
        let (sourceCluster, _) = try await SharedClusters.get()
        let targetCluster = try await TestCluster.start(name: "relay-pg18", bin: try TestCluster.postgres18())
        defer { targetCluster.stop() }
        let schema = "CREATE TABLE d (id int PRIMARY KEY, u int UNIQUE DEFERRABLE INITIALLY DEFERRED);"
        let database = try await sourceCluster.createDatabase(SharedClusters.uniqueName("relay_deferred"))
        let source = try await sourceCluster.connect(database: database)
        try await source.execute(schema + "CREATE PUBLICATION p FOR ALL TABLES")
        let slot = SharedClusters.uniqueName("relay")
        try await source.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [slot])
        // Triggers fire for this login (its deferred uniqueness check among them): it may use origins, nothing more.
        let target = try await targetCluster.connect()
        try await target.execute(
            schema
                + """
                CREATE ROLE applier LOGIN PASSWORD 'applier-pw'; GRANT ALL ON d TO applier;
                GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), pg_replication_origin_drop(text),
                    pg_replication_origin_session_setup(text), pg_replication_origin_session_progress(boolean),
                    pg_replication_origin_xact_setup(pg_lsn, timestamptz) TO applier;
                INSERT INTO d VALUES (1000, 7)
                """)
        let messages = Messages()
        let applier = RelayApplier(
            source: try sourceCluster.connectionString(database: database),
            target: try ConnectionString(targetCluster.url(database: "postgres", user: "applier", password: "applier-pw")),
            slot: slot, publication: "p", origin: "pgdm_deferred", statusInterval: .milliseconds(200), onMessage: messages.record)
        // The source's row collides with the target's own, at COMMIT (deferred).
        try await source.execute("INSERT INTO d VALUES (1, 7)")
        let failed = await Self.failure(of: applier) as? PostgresError
        #expect(failed?.sqlState == "23505", "\(failed.map { "\($0)" } ?? "no error")")

        try await target.execute("DELETE FROM d WHERE id = 1000")
        let running = Task { try await applier.run() }
        try await Self.barrier("after the fix", on: source, messages: messages)
        #expect(try await target.scalar("SELECT u::text FROM d WHERE id = 1") == "7", "the failed transaction was applied, not skipped")
        running.cancel()
        _ = await running.result
        try await Self.dropSlot(slot, on: source)
    }
}
