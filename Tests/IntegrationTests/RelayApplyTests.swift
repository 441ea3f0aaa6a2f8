import Foundation
import Logging
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
        CREATE TABLE g (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text, big text);
        ALTER TABLE g ALTER COLUMN big SET STORAGE EXTERNAL;
        INSERT INTO f VALUES (1, NULL), (1, NULL), (2, 'x');
        """

    /// A source and a target database holding the same schema and rows, a publication of everything and a pgoutput slot.
    static func pair(_ prefix: String, schema: String = Self.schema, targetSchema: String? = nil) async throws -> (
        source: String, target: String, slot: String
    ) {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        let source = try await sourceCluster.createDatabase(SharedClusters.uniqueName(prefix))
        let target = try await targetCluster.createDatabase(SharedClusters.uniqueName(prefix + "_target"))
        let slot = SharedClusters.uniqueName("relay")
        try await sourceCluster.connect(database: source).execute(schema + "CREATE PUBLICATION p FOR ALL TABLES")
        try await targetCluster.connect(database: target).execute(targetSchema ?? schema)
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

    /// Both databases of `pair` hold the same rows, by content; returns the source's fingerprint.
    @discardableResult
    static func expectSameContent(_ pair: (source: String, target: String, slot: String)) async throws -> Fingerprint {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        let expected = try await Fingerprint.of(sourceCluster, database: pair.source)
        let actual = try await Fingerprint.of(targetCluster, database: pair.target)
        #expect(actual.tables == expected.tables, "\(actual.differences(from: expected))")
        return expected
    }

    /// Drops the test's slot (``dropSlot(_:on:)``) and the applier's origins.
    static func release(
        _ pair: (source: String, target: String, slot: String), of applier: RelayApplier, source: Connection, target: Connection
    )
        async throws
    {
        try await dropSlot(pair.slot, on: source)
        try await RelayApplier.dropOrigin(applier.origin, on: target, timeout: .seconds(30), stage: .cutover, events: nil)
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
            // A key GENERATED ALWAYS set to DEFAULT (the target may not UPDATE it), its TOASTed value unchanged.
            "INSERT INTO g (v, big) VALUES ('first', '\(big)'), ('second', NULL)",
            "UPDATE g SET id = DEFAULT, v = 'renumbered' WHERE v = 'first'",
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
            try await target.scalar(
                "SELECT max(pg_replication_origin_progress(roname, true))::text FROM pg_replication_origin WHERE \(RelayApplier.ownOrigins)",
                [applier.origin]
            ).flatMap(LSN.init))
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

        try await Self.expectSameContent(pair)
        let identical = "SELECT count(*) FROM f WHERE a = 1"
        let counts = (source: try await source.scalar(identical), target: try await target.scalar(identical))
        #expect(counts.source == "1" && counts.target == "1", "one of two identical rows deleted: \(counts)")
        #expect(try await target.scalar("SELECT id::text FROM s") == "1", "RESTART IDENTITY applied")
        try await Self.release(pair, of: applier, source: source, target: target)
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

        try await Self.expectSameContent(pair)
        let target = try await targetCluster.connect(database: pair.target)
        #expect(try await target.scalar("SELECT count(*)::text FROM k WHERE v IN ('rolled back', 'never')") == "0")
        #expect(try await target.scalar("SELECT count(*)::text FROM k WHERE v = 'last'") == "4000")
        #expect(!spools(), "nothing left aside")
        try await Self.release(pair, of: applier, source: source, target: target)
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
        try await Self.release(pair, of: applier, source: source, target: target)
    }

    @Test(
        "values travel in binary between servers of one major version where every published type is built in, as text where a user type is published; equal by content either way, keys and whole rows of many types found",
        arguments: [false, true])
    func valueForms(userType: Bool) async throws {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        let schema =
            """
            CREATE DOMAIN positive AS int CHECK (VALUE > 0);
            CREATE TABLE wide (
                k uuid, t timestamptz, i2 int2, i8 int8, n numeric, f4 real, f8 float8, b bool, c char(5), vc varchar(10),
                tx text, by bytea, d date, tm time, ttz timetz, ts timestamp, iv interval, j json, jb jsonb, ip inet,
                cn cidr, mac macaddr, bits bit(4), vb varbit, arr text[], iarr int8[], nr numrange, pt point, tv tsvector,
                p positive, PRIMARY KEY (k, t));
            CREATE TABLE whole (f8 float8, n numeric, ts timestamptz, by bytea, s text);
            ALTER TABLE whole REPLICA IDENTITY FULL;
            """ + (userType ? "CREATE TYPE mood AS ENUM ('sad', 'ok'); CREATE TABLE moods (id int PRIMARY KEY, m mood);" : "")
        let pair = try await Self.pair(userType ? "relay_text" : "relay_binary", schema: schema)
        let source = try await sourceCluster.connect(database: pair.source)
        let messages = Messages()
        let applier = try await Self.applier(pair, messages: messages)
        let running = Task { try await applier.run() }
        for statement in [
            """
            INSERT INTO wide SELECT md5(g::text)::uuid, '2024-02-29 12:34:56.789+02'::timestamptz + g * interval '1 hour 1 microsecond',
                g, g * 1000000000007, g / 7.0, g / 3.0, g / 7.0, g % 2 = 0, 'c' || g, 'v' || g, repeat('ü', g), decode(md5(g::text), 'hex'),
                date '2024-01-01' + g, time '01:02:03.456' + g * interval '1 second', '12:00+05:30', timestamp '2000-01-01' + g * interval '1 day',
                g * interval '1 day 1 minute', json_build_object('g', g), jsonb_build_object('g', g, 'a', array[g, NULL]),
                ('10.0.' || g % 256 || '.1')::inet, '192.168.0.0/16', '08:00:2b:01:02:03', (g % 16)::bit(4), (g % 5)::bit(3)::varbit,
                array['a ' || g, NULL], array[g, -g], numrange(g, g + 1), point(g, -g), to_tsvector('simple', 'row ' || g), g
            FROM generate_series(1, 200) g
            """,
            """
            INSERT INTO wide (k, t, n, f4, f8, ts, d, j, arr) VALUES
                ('00000000-0000-0000-0000-000000000000', 'infinity', 'NaN', '-0', 'Infinity', '-infinity', 'infinity', '{"a": "\\u00fc"}',
                 '{NULL,"a b","c\\"d"}')
            """,
            "INSERT INTO whole SELECT g / 10.0, g * 1.25, '2024-01-01 00:00:00.000001+00', decode('00ff', 'hex'), NULL FROM generate_series(1, 5) g",
            "INSERT INTO whole VALUES (0.1, NULL, NULL, NULL, 'twin'), (0.1, NULL, NULL, NULL, 'twin'), ('NaN', 'NaN', 'infinity', '', '')",
            "UPDATE wide SET n = n * 1.5, f8 = f8 / 3, jb = jb || '{\"u\": true}', tx = NULL WHERE i2 % 3 = 0",
            "UPDATE wide SET t = t + interval '1 microsecond', k = md5(k::text)::uuid WHERE i2 % 5 = 0",
            "DELETE FROM wide WHERE i2 % 7 = 0",
            "UPDATE whole SET s = 'one twin' WHERE s = 'twin' AND ctid = (SELECT min(ctid) FROM whole WHERE s = 'twin')",
            "UPDATE whole SET s = 'changed' WHERE f8 = 0.2 OR f8 = 'NaN'",
            "DELETE FROM whole WHERE n = 1.25 * 3",
        ] + (userType ? ["INSERT INTO moods VALUES (1, 'sad'), (2, 'ok')", "UPDATE moods SET m = 'ok' WHERE id = 1"] : []) {
            try await source.execute(statement)
        }
        try await Self.barrier("values", on: source, messages: messages)
        // What the walsender was asked for: pg_stat_activity shows its replication command.
        let command = try await source.scalar(
            "SELECT query FROM pg_stat_activity WHERE backend_type = 'walsender' AND application_name = $1",
            [RelayApplier.applicationName(slot: pair.slot)])
        #expect(command?.hasPrefix("START_REPLICATION") == true, "\(command ?? "no walsender")")
        #expect(command?.contains("binary 'true'") == !userType, "\(command ?? "no walsender")")
        running.cancel()
        _ = await running.result

        let expected = try await Self.expectSameContent(pair)
        #expect(expected.tables["public.wide"]?.hasPrefix("173:") == true, "\(expected.tables)")
        let target = try await targetCluster.connect(database: pair.target)
        try await Self.release(pair, of: applier, source: source, target: target)
    }

    @Test(
        "a backlog is applied many source transactions to a target transaction, many INSERTs and UPDATEs to a statement, a row's UPDATEs in one target transaction as one, passing changes to other tables; not where a trigger fires under the replica role"
    )
    func groupsAndBatches() async throws {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        // The target's rows record when the statement that inserted them started.
        let schema = """
            CREATE TABLE h (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY, n int); INSERT INTO u VALUES (1, 0);
            CREATE TABLE w (id int PRIMARY KEY, n numeric, t text); INSERT INTO w SELECT g, g, NULL FROM generate_series(1, 100) g;
            """
        let pair = try await Self.pair(
            "relay_batches", schema: schema,
            targetSchema: schema.replacingOccurrences(of: "v text)", with: "v text, at timestamptz DEFAULT statement_timestamp())"))
        let source = try await sourceCluster.connect(database: pair.source)
        let target = try await targetCluster.connect(database: pair.target)
        let messages = Messages()
        let applier = try await Self.applier(pair, messages: messages)
        // A backlog, written while nothing applies: 1,500 transactions, each an INSERT and a change to a hot row.
        for id in 1...1_500 { try await source.execute("INSERT INTO h VALUES (\(id), 'x'); UPDATE u SET n = n + 1 WHERE id = 1") }
        try await source.execute("INSERT INTO h SELECT g, 'bulk' FROM generate_series(10001, 10640) g")
        try await source.execute("UPDATE w SET n = n * 1.5, t = 'x' || id WHERE id % 3 <> 0; UPDATE w SET n = -n WHERE id % 2 = 0")
        let commits = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        let before = Int(try await target.scalar(commits) ?? "") ?? 0
        // Groups close when the stream pauses, and the walsender may send no faster than the apply takes it: under
        // CI's load it also decodes every other test's WAL. The target's tables stay locked until the walsender has
        // sent the whole backlog (into socket buffers the apply has not read yet).
        let blocker = try await targetCluster.connect(database: pair.target)
        try await blocker.execute("BEGIN; LOCK TABLE h, u, w IN SHARE MODE")
        let backlogEnd = try await source.scalar("SELECT pg_current_wal_lsn()::text") ?? ""
        var running = Task { try await applier.run() }
        let sent = "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND sent_lsn >= $2::pg_lsn"
        let deadline = ContinuousClock.now + .seconds(240)
        var sentAll = false
        while !sentAll && ContinuousClock.now < deadline {
            sentAll = try await source.scalar(sent, [RelayApplier.applicationName(slot: pair.slot), backlogEnd]) == "1"
            if !sentAll { try await Task.sleep(for: .milliseconds(100)) }
        }
        try #require(sentAll, "the walsender had not sent the backlog (through \(backlogEnd)) after 240 s")
        try await blocker.execute("COMMIT")
        try await Self.barrier("backlog", on: source, messages: messages)
        running.cancel()
        _ = await running.result
        // The apply's sessions report their counts as they end.
        var after = before
        for _ in 0..<50 {
            try await target.execute("SELECT pg_stat_clear_snapshot()")
            after = Int(try await target.scalar(commits) ?? "") ?? 0
            if after - before >= 1_500 / 64 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(
            after - before >= 1_500 / 64 && after - before < 1_500 / 4, "\(after - before) target commits for 1,501 source transactions")
        // The hot row's 1,500 UPDATEs: one per target transaction.
        let updated = Int(try await target.scalar("SELECT n_tup_upd::text FROM pg_stat_user_tables WHERE relname = 'u'") ?? "") ?? 0
        #expect(updated >= 1_500 / 64 && updated < 1_500 / 4, "\(updated) row versions written for 1,500 UPDATEs")
        let statements = "SELECT count(DISTINCT at)::text FROM h WHERE v = 'bulk'"
        let bulk = Int(try await target.scalar(statements) ?? "") ?? 0
        #expect(bulk >= 10 && bulk <= 640 / 8, "640 rows inserted by \(bulk) statements")
        let content =
            "SELECT md5(string_agg(id || v, ',' ORDER BY id)) || (SELECT n FROM u) || (SELECT md5(string_agg(w::text, ',' ORDER BY id)) FROM w) FROM h"
        #expect(try await target.scalar(content) == (try await source.scalar(content)))

        // A trigger that fires under the replica role could tell the order: each INSERT goes on its own.
        try await target.execute(
            """
            CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
            CREATE TRIGGER always AFTER UPDATE ON u FOR EACH ROW EXECUTE FUNCTION noop();
            ALTER TABLE u ENABLE ALWAYS TRIGGER always;
            """)
        running = Task { try await applier.run() }
        try await source.execute("INSERT INTO h SELECT g, 'one by one' FROM generate_series(20001, 20640) g")
        try await Self.barrier("trigger", on: source, messages: messages)
        running.cancel()
        _ = await running.result
        let single = Int(try await target.scalar("SELECT count(DISTINCT at)::text FROM h WHERE v = 'one by one'") ?? "") ?? 0
        #expect(single > 640 / 2, "640 rows inserted by \(single) statements")
        #expect(try await target.scalar(content) == (try await source.scalar(content)))
        try await Self.release(pair, of: applier, source: source, target: target)
    }

    @Test("UPDATEs in a batch are checked as the target's columns: a value too long for a narrower column stops the apply, never cut short")
    func batchedUpdateKeepsLengths() async throws {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        let schema = "CREATE TABLE n (id int PRIMARY KEY, v text); INSERT INTO n VALUES (1, 'a'), (2, 'b');"
        let pair = try await Self.pair(
            "relay_lengths", schema: schema, targetSchema: schema.replacingOccurrences(of: "v text", with: "v varchar(3)"))
        let source = try await sourceCluster.connect(database: pair.source)
        let target = try await targetCluster.connect(database: pair.target)
        try await source.execute("UPDATE n SET v = 'xy' WHERE id = 2; UPDATE n SET v = 'abcd' WHERE id = 1")
        let applier = try await Self.applier(pair, messages: Messages())
        let error = await Self.failure(of: applier)
        #expect("\(error.map { "\($0)" } ?? "none")".contains("too long"), "\(error.map { "\($0)" } ?? "none")")
        #expect(try await target.scalar("SELECT string_agg(v, ',' ORDER BY id) FROM n") == "a,b", "nothing of that transaction applied")
        try await Self.release(pair, of: applier, source: source, target: target)
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
                    // That row may or may not have committed (the comparison by content decides): the next id goes on
                    // from it, never writing it again (a committed one would then fail as a duplicate for ever).
                    try? await Task.sleep(for: .milliseconds(200))
                }
            }
        }
        try await Task.sleep(for: .seconds(1))
        try await targetCluster.restart()
        try await Task.sleep(for: .seconds(2))
        try await sourceCluster.restart()
        try await Task.sleep(for: .seconds(2))
        // The check below wants a few dozen rows written: a loaded machine is slow to take them.
        let counting = try await sourceCluster.connect()
        for _ in 0..<600 where Int(try await counting.scalar("SELECT count(*) FROM counter") ?? "0") ?? 0 <= 40 {
            try await Task.sleep(for: .milliseconds(100))
        }
        writing.cancel()
        _ = await writing.result
        let source = try await sourceCluster.connect()
        try await Self.barrier("after restarts", on: source, messages: messages)
        // Both restarts were lived through: the apply reached the barrier and the content is equal (below). Under
        // load one reconnect may serve both (the second restart came while the first was still being waited out).
        #expect(reconnects.count >= 1, "reconnected")

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

extension RelayApplyTests {
    @Test(
        "two target sessions at once: hot rows changed in any order, unique values deleted then inserted again (by the same row and by another), rows inserted then changed by the next transaction, keys changed, identity FULL duplicates and TOASTed rows; equal by content, only ever a prefix of the source's history on the target, no deadlock",
        arguments: [(1, 2), (RelayApplySession.groupTransactions, 2), (3, 3)])
    func parallelApply(groupTransactions: Int, sessions: Int) async throws {
        let (sourceCluster, targetCluster) = try await SharedClusters.get()
        let schema = """
            CREATE TABLE hot (id int PRIMARY KEY, n bigint);
            CREATE TABLE kv (k int PRIMARY KEY, v text);
            CREATE TABLE uq (id int PRIMARY KEY, u int UNIQUE);
            CREATE TABLE moves (id int PRIMARY KEY, u int UNIQUE);
            CREATE TABLE applied (i int PRIMARY KEY);
            CREATE TABLE log (x int);
            CREATE TABLE dup (a int, b text);
            CREATE TABLE fat (id int, doc text, n int);
            ALTER TABLE dup REPLICA IDENTITY FULL;
            ALTER TABLE fat REPLICA IDENTITY FULL;
            INSERT INTO hot SELECT g, 0 FROM generate_series(1, 6) g;
            INSERT INTO uq SELECT g, g FROM generate_series(1, 10) g;
            INSERT INTO moves SELECT g, g FROM generate_series(1, 10) g;
            """
        let database = SharedClusters.uniqueName("relay_parallel")
        let source = try await sourceCluster.connect(database: try await sourceCluster.createDatabase(database))
        let target = try await targetCluster.connect(database: try await targetCluster.createDatabase(database + "_target"))
        try await source.execute(schema + "CREATE PUBLICATION p FOR ALL TABLES")
        try await target.execute(schema)
        let slot = SharedClusters.uniqueName("relay")
        try await source.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [slot])

        // A backlog first, so that the apply has thousands of transactions to spread over its sessions.
        var random = UInt64(42)
        func next(_ bound: Int) -> Int {
            random = random &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int(random >> 33) % bound
        }
        for i in 1...2_500 {
            let (a, b) = (1 + next(6), 1 + next(6))
            var statements = [
                "INSERT INTO applied VALUES (\(i))", "UPDATE hot SET n = n + 1 WHERE id = \(a)",
                "UPDATE hot SET n = n + \(i) WHERE id = \(b)",
                "INSERT INTO log VALUES (\(i))",
            ]
            switch i % 5 {
            case 0: statements += ["INSERT INTO kv VALUES (\(i), 'new')", "UPDATE kv SET v = 'moved on' WHERE k = \(i - 5 + 100_000)"]
            case 1: statements.append("UPDATE kv SET v = 'changed by the next' WHERE k = \(i - 1)")
            case 2: statements.append("DELETE FROM kv WHERE k = \(i - 2)")
            case 3: statements.append("INSERT INTO kv VALUES (\(i - 3), 'again')")
            default: statements.append("UPDATE kv SET k = k + 100000 WHERE k = \(i - 4)")
            }
            // A unique value that is not the key: freed in one transaction, taken by another row in the next.
            let u = 1 + next(10)
            statements.append(
                i % 2 == 0 ? "UPDATE uq SET u = -u WHERE u = \(u)" : "UPDATE uq SET u = -u WHERE u = -\(u)")
            // A unique value deleted with its row, then taken by a new row in the next transaction.
            let moved = (i - 1) / 2 % 10 + 1
            statements.append(i % 2 == 1 ? "DELETE FROM moves WHERE u = \(moved)" : "INSERT INTO moves VALUES (\(1_000 + i), \(moved))")
            // Identity FULL: duplicate rows inserted, one of them changed or deleted by a later transaction.
            let one = "(SELECT ctid FROM dup WHERE a = \(i % 7) LIMIT 1)"
            switch i % 3 {
            case 0: statements.append("INSERT INTO dup VALUES (\(i % 7), 'x')")
            case 1: statements.append("UPDATE dup SET b = 'y' WHERE ctid = \(one)")
            default: statements.append("DELETE FROM dup WHERE ctid = \(one)")
            }
            // And rows with a TOASTed value: changed (the value left out of the stream's new row) twice, then deleted.
            switch i % 50 {
            case 0: statements.append("INSERT INTO fat SELECT \(i), string_agg(md5(random()::text), ''), 0 FROM generate_series(1, 400)")
            case 1, 2: statements.append("UPDATE fat SET n = n + 1 WHERE id = \(i / 50 * 50)")
            case 3: statements.append("DELETE FROM fat WHERE id = \(i / 50 * 50 - 50)")
            default: break
            }
            try await source.execute("BEGIN; " + statements.joined(separator: "; ") + "; COMMIT")
        }
        // A row inserted early in a transaction that takes the target long (a trigger of its own that fires always),
        // changed by the next: wherever a group ends between the two, the next must wait for the COMMIT, not only for
        // the insert (invisible until then) to have run.
        try await source.execute("CREATE TABLE slow (x int)")
        try await target.execute(
            """
            CREATE TABLE slow (x int);
            CREATE FUNCTION slowly() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.01); RETURN NEW; END $$;
            CREATE TRIGGER slowly BEFORE INSERT ON slow FOR EACH ROW EXECUTE FUNCTION slowly();
            ALTER TABLE slow ENABLE ALWAYS TRIGGER slowly
            """)
        for j in 0..<16 {
            try await source.execute(
                "BEGIN; INSERT INTO kv VALUES (\(500_000 + j), 'early'); INSERT INTO slow SELECT generate_series(1, 20); COMMIT")
            try await source.execute("UPDATE kv SET v = 'changed next' WHERE k = \(500_000 + j)")
            for _ in 0...j { try await source.execute("INSERT INTO log VALUES (0)") }
        }

        let messages = Messages()
        let reconnects = Messages()
        let origin = "pgdm_" + slot
        var applier = RelayApplier(
            source: try sourceCluster.connectionString(database: database),
            target: try targetCluster.connectionString(database: database + "_target"), slot: slot, publication: "p", origin: origin,
            statusInterval: .milliseconds(200), onMessage: messages.record, onReconnect: { reason, _ in reconnects.record(reason, LSN(0)) })
        applier.groupTransactions = groupTransactions
        applier.sessions = sessions
        let running = Task { try await applier.run() }
        try await source.query("SELECT pg_logical_emit_message(true, 'caught up', '')")
        // While it applies, the target shows transactions 1…n and never one without all before it.
        var gaps: [String] = []
        var looks = 0
        while !messages.contains("caught up") && looks < 6_000 {
            let row = try await target.query("SELECT count(*)::text, coalesce(max(i), 0)::text FROM applied").rows[0]
            if row[0] != row[1] { gaps.append("\(row[0] ?? "?") rows up to \(row[1] ?? "?")") }
            looks += 1
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(messages.contains("caught up"), "the applier never caught up")
        #expect(gaps.isEmpty, "the target showed transactions without all those before them: \(gaps.prefix(5))")
        #expect(reconnects.count == 0, "the apply started again (a deadlock, or an error)")
        // Every session committed transactions.
        let applying = try await target.scalar(
            "SELECT count(*)::text FROM pg_replication_origin_status WHERE external_id ~ ('^' || $1 || '(/[0-9]+)?$') AND remote_lsn <> '0/0'",
            [origin])
        #expect(applying == String(sessions))
        running.cancel()
        _ = await running.result

        let expected = try await Fingerprint.of(sourceCluster, database: database)
        let actual = try await Fingerprint.of(targetCluster, database: database + "_target")
        #expect(actual.tables == expected.tables, "\(actual.differences(from: expected))")
        try await Self.dropSlot(slot, on: source)
        try await RelayApplier.dropOrigin(origin, on: target, timeout: .seconds(30), stage: .cutover, events: nil)
        #expect(
            try await target.scalar("SELECT count(*)::text FROM pg_replication_origin WHERE \(RelayApplier.ownOrigins)", [origin]) == "0")
    }
}

extension RelayApplyTests {
    @Test(
        "relay apply's origin, held by a session still closing, is dropped once released; one held on is reported every 10 s, refused after the timeout naming the fix, and stays"
    )
    func originDropWaitsForItsHolder() async throws {
        let (_, targetCluster) = try await SharedClusters.get()
        let origin = SharedClusters.uniqueName("pgdm_held")
        let admin = try await targetCluster.connect()
        try await admin.query("SELECT pg_replication_origin_create($1), pg_replication_origin_create($1 || '/1')", [origin])
        let count = "SELECT count(*)::text FROM pg_replication_origin WHERE roname = $1 OR roname = $1 || '/1'"

        // A session holding the second origin lets go a moment after the drop begins, as the apply's sessions do
        // after they are closed at cutover.
        let holder = try await targetCluster.connect()
        try await holder.query("SELECT pg_replication_origin_session_setup($1 || '/1')", [origin])
        let letGo = Task {
            try await Task.sleep(for: .milliseconds(500))
            await holder.close()
        }
        try await RelayApplier.dropOrigin(origin, on: admin, timeout: .seconds(30), stage: .cutover, events: nil)
        try await letGo.value
        #expect(try await admin.scalar(count, [origin]) == "0")

        // One that stays held: the wait reported, given up after the timeout, with the way out; nothing dropped.
        try await admin.query("SELECT pg_replication_origin_create($1)", [origin])
        let stays = try await targetCluster.connect()
        try await stays.query("SELECT pg_replication_origin_session_setup($1)", [origin])
        let pid = try await stays.scalar("SELECT pg_backend_pid()::text") ?? "?"
        let log = EventLog()
        let events = EventEmitter(handler: log.record, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        let error = await #expect(throws: MigrationError.self) {
            try await RelayApplier.dropOrigin(origin, on: admin, timeout: .seconds(11), stage: .cleanup, events: events)
        }
        let waits = log.all.filter { $0.level == .warning && $0.stage == .cleanup }.map(\.message)
        #expect(
            waits.count == 1 && waits[0].contains("waiting 10 s for relay apply's replication origin")
                && waits[0].contains("held by pid \(pid) (postgres, "), "\(waits)")
        #expect(error?.code == .lockTimeout && error?.stage == .cleanup)
        #expect(
            error?.message.contains("waiting for relay apply's replication origin") == true
                && error?.message.contains("held by pid \(pid) (") == true, "\(error?.message ?? "")")
        #expect(error?.fix?.contains("pg_replication_origin_drop") == true, "\(error?.fix ?? "")")
        #expect(try await admin.scalar(count, [origin]) == "1")
        await stays.close()
        try await RelayApplier.dropOrigin(origin, on: admin, timeout: .seconds(30), stage: .cleanup, events: nil)
        #expect(try await admin.scalar(count, [origin]) == "0")
    }
}
