import Foundation
import PGDBMigrator
import PostgresClient
import Testing

/// Crashes and faults, with real processes: `kill -9` of the tool at each
/// stage, a connection cut under it, then `--resume` of the same command.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct ResumeTests {
    /// Six tables of ~2 MB: enough to still be copying when the test strikes through a throttled relay.
    static func source(tables: Int = 6) async throws -> String {
        let (source, _) = try await SharedClusters.get()
        let name = try await source.createDatabase(SharedClusters.uniqueName("resume"))
        let setup = try await source.connect(database: name)
        for table in 1...tables {
            try await setup.execute(
                """
                CREATE TABLE t\(table) (id int PRIMARY KEY, v text NOT NULL);
                INSERT INTO t\(table) SELECT g, repeat(md5((g * \(table))::text), 4) FROM generate_series(1, 12000 + \(table) * 100) g;
                CREATE INDEX t\(table)_v_idx ON t\(table) (v);
                """)
        }
        await setup.close()
        return name
    }

    /// A `--jobs 1` copy of `sourceDatabase` into `targetDatabase` on the server at `port`, through a relay
    /// throttled to 3 MB/s (slow enough to strike mid-copy), with a state directory of its own.
    struct ThrottledCopy {
        let relay: TCPRelay
        let state: String
        let arguments: [String]

        /// Ends the relay and removes the state directory.
        func stop() {
            relay.stop()
            try? FileManager.default.removeItem(atPath: state)
        }
    }

    static func throttledCopy(of sourceDatabase: String, into targetDatabase: String, onPort port: Int) async throws -> ThrottledCopy {
        let (source, _) = try await SharedClusters.get()
        let relay = try TCPRelay(to: port, bytesPerSecond: 3_000_000)
        let state = stateDirectory()
        return ThrottledCopy(
            relay: relay, state: state,
            arguments: [
                "--source", source.url(database: sourceDatabase), "--target", url(port: relay.port, database: targetDatabase),
                "--jobs", "1", "--state-dir", state,
            ])
    }

    /// Stops a `--jobs 1` copy of `source(tables:)` at its last table: t1, the smallest, is copied last, and
    /// an ALTER on it queued now waits behind the catalog session's lock, so the copy cannot take it.
    /// Returns the run's result once it has exited; the ALTER is rolled back.
    static func stopAtLastTable(_ run: CLI.Running, database: String) async throws -> CLI.Result {
        let (source, _) = try await SharedClusters.get()
        let ddl = try await source.connect(database: database)
        let altering = Task { _ = try await ddl.execute("BEGIN; ALTER TABLE t1 ADD COLUMN added int") }
        let result = try await run.wait(timeout: 60)
        try await altering.value  // granted once the run's sessions are gone
        try await ddl.execute("ROLLBACK")
        return result
    }

    static func url(port: Int, database: String) -> String {
        "postgresql://\(TestCluster.superuser):\(percentEncode(TestCluster.superuserPassword))@127.0.0.1:\(port)/\(database)"
    }

    static func stateDirectory() -> String { NSTemporaryDirectory() + "pgdm-state-\(UUID().uuidString)" }

    /// The tables the events of `stderr` say were copied, and those they say were skipped.
    static func tables(in stderr: String) -> (copied: Set<String>, skipped: Set<String>) {
        var copied: Set<String> = [], skipped: Set<String> = []
        for line in stderr.split(separator: "\n") {
            if let range = line.range(of: #"copied "public"\."(t\d+)""#, options: .regularExpression) {
                copied.insert(String(line[range].split(separator: ".").last!.trimmingCharacters(in: ["\""])))
            }
            if let range = line.range(of: #"skipped "public"\."(t\d+)""#, options: .regularExpression) {
                skipped.insert(String(line[range].split(separator: ".").last!.trimmingCharacters(in: ["\""])))
            }
        }
        return (copied, skipped)
    }

    static func expectEqual(_ sourceDatabase: String, _ targetDatabase: String, materializedViews: Bool = true) async throws {
        let (source, target) = try await SharedClusters.get()
        let expected = try await Fingerprint.of(source, database: sourceDatabase, materializedViews: materializedViews)
        let actual = try await Fingerprint.of(target, database: targetDatabase, materializedViews: materializedViews)
        #expect(actual == expected, "\(actual.differences(from: expected))")
    }

    @Test("kill -9 during the offline copy, then --resume: equal, and the finished tables are not copied again")
    func killDuringOfflineCopy() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await Self.source()
        let targetDatabase = SharedClusters.uniqueName("resumed")
        let copy = try await Self.throttledCopy(of: sourceDatabase, into: targetDatabase, onPort: target.port)
        defer { copy.stop() }
        let first = try CLI.start(copy.arguments)
        #expect(await first.waitForStderr(#"copied "public"."#))
        first.signal(SIGKILL)
        let killed = try await first.wait(timeout: 120)
        #expect(killed.status == 128 + SIGKILL || killed.status == SIGKILL)
        let before = Self.tables(in: killed.stderr).copied
        #expect(!before.isEmpty && before.count < 6, "copied before the kill: \(before)")

        copy.relay.bytesPerSecond = nil
        // Forgetting --resume once is refused and leaves the record (and the target's tables) as they were.
        let statePath = copy.state + "/state.json"
        let recorded = try Data(contentsOf: URL(fileURLWithPath: statePath))
        let forgot = try await CLI.run(copy.arguments + ["--json"])
        #expect(forgot.status == 1, "\(forgot.stderr)")
        #expect(forgot.failureCode == "run_state", "\(forgot.stdout)")
        #expect(forgot.stderr.contains("an interrupted offline run is recorded") && forgot.stderr.contains("--resume"), "\(forgot.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: statePath)) == recorded, "the record is untouched")

        // (Under the default --verify-method auto, these tables of integers and text would be summed in the target server.)
        let resumed = try await CLI.run(copy.arguments + ["--resume", "--verify-method", "stream"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let after = Self.tables(in: resumed.stderr)
        #expect(after.skipped == before, "skipped \(after.skipped), copied before the kill \(before)")
        #expect(after.copied.isDisjoint(with: before), "copied twice: \(after.copied.intersection(before))")
        #expect(after.copied.union(before).count == 6)
        #expect(resumed.stderr.contains("resuming the interrupted run"))
        // Verify digests what this run copied; what the killed run copied, under its own snapshot, is compared in the servers.
        #expect(
            resumed.stderr.contains(
                "\(after.copied.count) table(s) verified as they were copied (the source's COPY stream digested, the target's read back); "
                    + "\(before.count) compared in the servers"), "\(resumed.stderr)")
        try await Self.expectEqual(sourceDatabase, targetDatabase)
        #expect(try await schemaDump(target, database: targetDatabase) == schemaDump(source, database: sourceDatabase))
        for file in ["state.json", "plan.json", "parts.log"] {
            #expect(!FileManager.default.fileExists(atPath: copy.state + "/" + file), "the state of a completed run is removed: \(file)")
        }

        // Nothing left to resume, and a changed setting is refused by name.
        let again = try await CLI.run(copy.arguments + ["--resume"])
        #expect(again.status != 0 && again.stderr.contains("no interrupted run to resume"))
    }

    @Test("--resume with a changed setting is refused, naming the setting")
    func changedSettingsRefused() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await Self.source(tables: 1)
        let targetDatabase = SharedClusters.uniqueName("refused")
        let state = Self.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: state) }
        let arguments = [
            "--source", source.url(database: sourceDatabase), "--target", target.url(database: targetDatabase), "--state-dir", state,
        ]
        // A run that fails after recording its settings: its target database is already there and not empty.
        let admin = try await target.connect()
        try await admin.execute("CREATE DATABASE \(SQL.identifier(targetDatabase))")
        let occupied = try await target.connect(database: targetDatabase)
        try await occupied.execute("CREATE TABLE squatter (id int)")
        let failed = try await CLI.run(arguments)
        #expect(failed.status != 0 && failed.stderr.contains("--resume"), "\(failed.stderr)")
        let refused = try await CLI.run(arguments + ["--resume", "--copy-method", "dump", "--exclude-table", "t9"])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("--copy-method was 'native', now 'dump'"), "\(refused.stderr)")
        #expect(refused.stderr.contains("--exclude-table was not set, now 't9'"), "\(refused.stderr)")

        // --mode cleanup lists the recorded progress (dry run), then removes it.
        let stateFile = state + "/state.json"
        let dryRun = try await CLI.run(arguments + ["--mode", "cleanup", "--dry-run"])
        #expect(dryRun.status == 0 && dryRun.stderr.contains("would remove the recorded progress"), "\(dryRun.stderr)")
        #expect(FileManager.default.fileExists(atPath: stateFile))
        // As a killed copy leaves it:
        _ = FileManager.default.createFile(atPath: state + "/parts.log", contents: Data("started 1/0/1\n".utf8))
        let cleanup = try await CLI.run(arguments + ["--mode", "cleanup"])
        #expect(cleanup.status == 0 && cleanup.stderr.contains("removed the recorded progress"), "\(cleanup.stderr)")
        #expect(!FileManager.default.fileExists(atPath: stateFile))
        #expect(!FileManager.default.fileExists(atPath: state + "/parts.log"))
    }

    @Test("the connection to the source cut during the copy: a clear error, and --resume finishes the job")
    func sourceConnectionCut() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await Self.source()
        let targetDatabase = SharedClusters.uniqueName("cut")
        let relay = try TCPRelay(to: source.port, bytesPerSecond: 3_000_000)
        defer { relay.stop() }
        let state = Self.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: state) }
        let arguments = [
            "--source", Self.url(port: relay.port, database: sourceDatabase), "--target", target.url(database: targetDatabase),
            "--jobs", "2", "--state-dir", state,
        ]
        let first = try CLI.start(arguments)
        #expect(await first.waitForStderr(#"copied "public"."#))
        relay.cutAll()
        let failed = try await first.wait(timeout: 60)
        #expect(failed.status == 1, "\(failed.stderr)")
        #expect(failed.stderr.contains("failed"), "\(failed.stderr)")
        #expect(failed.stderr.contains("--resume"), "the error should name the way forward: \(failed.stderr)")
        #expect(!failed.stderr.contains(TestCluster.superuserPassword))

        relay.bytesPerSecond = nil
        let resumed = try await CLI.run(arguments + ["--resume"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(!Self.tables(in: resumed.stderr).skipped.isEmpty)
        try await Self.expectEqual(sourceDatabase, targetDatabase)
    }

    @Test("DDL queued behind the copy's locks: the run stops at once naming the table, instead of both waiting forever; --resume finishes")
    func ddlDuringCopy() async throws {
        let (_, target) = try await SharedClusters.get()
        let sourceDatabase = try await Self.source()
        let targetDatabase = SharedClusters.uniqueName("ddl")
        let copy = try await Self.throttledCopy(of: sourceDatabase, into: targetDatabase, onPort: target.port)
        defer { copy.stop() }
        let first = try CLI.start(copy.arguments)
        #expect(await first.waitForStderr(#"copied "public"."#))
        let failed = try await Self.stopAtLastTable(first, database: sourceDatabase)
        #expect(failed.status == 1, "\(failed.stderr)")
        #expect(failed.stderr.contains(#"cannot lock "public"."t1" on the source without waiting"#), "\(failed.stderr)")
        #expect(failed.stderr.contains("--resume"))

        copy.relay.bytesPerSecond = nil
        let resumed = try await CLI.run(copy.arguments + ["--resume"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        try await Self.expectEqual(sourceDatabase, targetDatabase)
    }

    @Test("an unlogged table emptied by a crash of the target is copied again by --resume, never skipped")
    func unloggedAfterTargetCrash() async throws {
        let (source, _) = try await SharedClusters.get()
        let crashing = try await TestCluster.start(name: "crashing-target")
        defer { crashing.stop() }
        let sourceDatabase = try await Self.source(tables: 3)
        let setup = try await source.connect(database: sourceDatabase)
        // The largest table, so copied first: committed and recorded before the run stops. Its identity
        // sequence is unlogged too (PostgreSQL 15+): the crash resets it as well.
        try await setup.execute(
            "CREATE UNLOGGED TABLE scratch (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text); "
                + "INSERT INTO scratch (v) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 30000) g")
        let targetDatabase = SharedClusters.uniqueName("unlogged")
        let copy = try await Self.throttledCopy(of: sourceDatabase, into: targetDatabase, onPort: crashing.port)
        defer { copy.stop() }
        let first = try CLI.start(copy.arguments)
        #expect(await first.waitForStderr(#"copied "public"."scratch""#))
        let failed = try await Self.stopAtLastTable(first, database: sourceDatabase)
        #expect(failed.status == 1, "\(failed.stderr)")

        try await crashing.crashAndRestart()
        let target = try await crashing.connect(database: targetDatabase)
        #expect(try await target.scalar("SELECT count(*) FROM scratch") == "0", "crash recovery emptied the unlogged table")
        copy.relay.bytesPerSecond = nil

        // A session on the target holds the table the resumed run must empty: the wait is reported, then given up on.
        let blocker = try await Connection.connect(
            try crashing.connectionString(database: targetDatabase).setting("application_name", to: "blocker-app"), label: "blocker")
        try await blocker.execute("BEGIN; LOCK TABLE scratch IN ACCESS SHARE MODE")
        let blocked = try await CLI.start(copy.arguments + ["--resume", "--verify", "off", "--lock-timeout-secs", "12"]).wait(timeout: 60)
        #expect(blocked.status == 1, "\(blocked.stderr)")
        #expect(blocked.stderr.contains("waiting 10 s for AccessExclusiveLock lock on scratch"), "\(blocked.stderr)")
        #expect(blocked.stderr.contains("gave up after") && blocked.stderr.contains("blocker-app"), "\(blocked.stderr)")
        try await blocker.execute("ROLLBACK")

        let resumed = try await CLI.run(copy.arguments + ["--resume", "--verify", "off"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stderr.contains("copying unlogged table \"public\".\"scratch\" again in full"), "\(resumed.stderr)")
        let expected = try await Fingerprint.of(source, database: sourceDatabase)
        let actual = try await Fingerprint.of(crashing, database: targetDatabase)
        #expect(actual == expected, "\(actual.differences(from: expected))")
    }

    @Test("a source that kills idle transactions after 300 ms cannot end the snapshot holder mid-copy")
    func snapshotHolderTimeouts() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await Self.source(tables: 2)
        let setup = try await source.connect(database: sourceDatabase)
        // Large objects make the restore before the copy (while the holder sits idle) take a while through the relay.
        try await setup.execute("SELECT lo_from_bytea(0, convert_to(repeat(md5(g::text), 200), 'UTF8')) FROM generate_series(1, 200) g")
        try await setup.execute(
            "ALTER DATABASE \(SQL.identifier(sourceDatabase)) SET idle_in_transaction_session_timeout = '300ms'; "
                + "ALTER DATABASE \(SQL.identifier(sourceDatabase)) SET statement_timeout = '300ms'")
        let relay = try TCPRelay(to: target.port, bytesPerSecond: 1_000_000)
        defer { relay.stop() }
        let targetDatabase = SharedClusters.uniqueName("timeouts")
        let result = try await CLI.run([
            "--source", source.url(database: sourceDatabase), "--target", Self.url(port: relay.port, database: targetDatabase),
            "--state-dir", Self.stateDirectory(), "--verify", "off",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        try await setup.execute(
            "ALTER DATABASE \(SQL.identifier(sourceDatabase)) RESET idle_in_transaction_session_timeout; "
                + "ALTER DATABASE \(SQL.identifier(sourceDatabase)) RESET statement_timeout")
        try await Self.expectEqual(sourceDatabase, targetDatabase)
    }

    /// Whether the run's slot (source) and subscription (target) still exist.
    static func replicationObjects(_ names: OnlineAbortTests.Names) async throws -> (slot: Bool, subscription: Bool) {
        let (source, target) = try await SharedClusters.get()
        let sourceAdmin = try await source.connect()
        let targetAdmin = try await target.connect()
        let slot = try await sourceAdmin.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", [names.slot])
        let subscription = try await targetAdmin.scalar("SELECT count(*) FROM pg_subscription WHERE subname = $1", [names.subscription])
        return (slot != "0", subscription != "0")
    }

    @Test(
        "kill -9 while streaming with writes running, then --resume: it re-attaches, and cutover loses nothing and applies nothing twice",
        arguments: ["subscription", "relay"])
    func killWhileStreaming(apply: String) async throws {
        let (source, _) = try await SharedClusters.get()
        let sourceDatabase = try await OfflineMigrationTests.sampleSource()
        let targetDatabase = SharedClusters.uniqueName("reattached")
        let names = OnlineAbortTests.Names()
        let state = Self.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: state) }
        let workload = WriteWorkload()
        try await workload.start(source, database: sourceDatabase)
        var arguments =
            try await OnlineAbortTests.arguments(sourceDatabase, targetDatabase, names) + ["--state-dir", state, "--apply", apply]
        if apply == "relay", let flag = arguments.firstIndex(of: "--subscription-name") { arguments.removeSubrange(flag...(flag + 1)) }
        let first = try CLI.start(arguments)
        #expect(await first.waitForStderr("stage=Lag"))
        if apply == "relay" {
            // Killed while it applies: a transaction half-way on the target dies with its session, and the
            // origin holds the last one committed.
            #expect(first.stderrSoFar.contains("relay apply started"), "\(first.stderrSoFar)")
            // The apply's session creates its origin a moment after the run says it started.
            for _ in 0..<100 where try await OnlineRelayTests.origins("dbmigrator_" + names.slot) != "1" {
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(try await OnlineRelayTests.origins("dbmigrator_" + names.slot) == "1")
        }
        first.signal(SIGKILL)
        _ = try await first.wait(timeout: 120)
        try await Task.sleep(for: .seconds(1))  // the application keeps writing while no tool runs

        let second = try CLI.start(arguments + ["--resume"])
        #expect(await second.waitForStderr("re-attached"))
        #expect(await second.waitForStderr("stage=Lag"))
        let committed = await workload.stop()
        second.signal(SIGINT)
        let result = try await second.wait(timeout: 120)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(committed > 10, "workload: \(workload.lastError ?? "none")")
        #expect(!result.stderr.contains("stage=Dump"), "a re-attached run copies nothing again")
        // Equal by content: a change applied twice would show as a duplicate row (the identity FULL table
        // takes duplicates) or stop the apply (a key taken twice).
        try await Self.expectEqual(sourceDatabase, targetDatabase, materializedViews: false)
        #expect(try await Self.replicationObjects(names) == (false, false))
        #expect(try await OnlineRelayTests.origins("dbmigrator_" + names.slot) == "0")
    }

    @Test("kill -9 during the online copy, then --resume: the copy starts again from a new slot and ends equal")
    func killDuringOnlineCopy() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await Self.source()
        let targetDatabase = SharedClusters.uniqueName("recopied")
        let names = OnlineAbortTests.Names()
        let state = Self.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: state) }
        let relay = try TCPRelay(to: target.port, bytesPerSecond: 3_000_000)
        defer { relay.stop() }
        let writer = try await source.connect(database: sourceDatabase)
        let writes = Task {
            var next = 1_000_000
            while !Task.isCancelled {
                do {
                    try await writer.execute(
                        "INSERT INTO t1 VALUES (\(next), 'written during the run'); UPDATE t2 SET v = v || '!' WHERE id = \(next % 1000 + 1)"
                    )
                } catch { break }
                next += 1
                try? await Task.sleep(for: .milliseconds(5))
            }
            return next - 1_000_000
        }
        let arguments = [
            "--mode", "online", "--source", source.url(database: sourceDatabase), "--target",
            Self.url(port: relay.port, database: targetDatabase),
            "--slot-name", names.slot, "--publication", names.publication, "--subscription-name", names.subscription,
            "--cutover-poll-secs", "0.5", "--cutover-fast-poll-ms", "100", "--jobs", "2", "--state-dir", state,
        ]
        let first = try CLI.start(arguments)
        #expect(await first.waitForStderr(#"copied "public"."#))
        first.signal(SIGKILL)
        _ = try await first.wait(timeout: 120)
        #expect(try await Self.replicationObjects(names).slot, "the killed run's slot is still there")

        relay.bytesPerSecond = nil
        let second = try CLI.start(arguments + ["--resume"])
        #expect(await second.waitForStderr("its snapshot died with it"))
        #expect(await second.waitForStderr("stage=Lag"))
        writes.cancel()
        let written = await writes.value
        second.signal(SIGINT)
        let result = try await second.wait(timeout: 120)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(written > 10)
        try await Self.expectEqual(sourceDatabase, targetDatabase)
        #expect(try await Self.replicationObjects(names) == (false, false))
        let publication = try await writer.scalar("SELECT count(*) FROM pg_publication WHERE pubname = $1", [names.publication])
        #expect(publication == "0", "the publication the first run created is dropped at cutover")
    }

    @Test("kill -9 during the cutover's teardown, after the barrier was applied: --resume only finishes the teardown")
    func killDuringTeardown() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await Self.source(tables: 2)
        let targetDatabase = SharedClusters.uniqueName("teardown")
        let names = OnlineAbortTests.Names()
        let state = Self.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: state) }
        let arguments = try await OnlineAbortTests.arguments(sourceDatabase, targetDatabase, names) + ["--state-dir", state]
        let first = try CLI.start(arguments)
        #expect(await first.waitForStderr("stage=Lag"))
        let writer = try await source.connect(database: sourceDatabase)
        try await writer.execute("INSERT INTO t1 VALUES (999999, 'after the copy')")
        // Holding a lock on the publication stalls its DROP, the teardown's last step.
        let blocker = try await source.connect(database: sourceDatabase)
        try await blocker.execute(
            "BEGIN; ALTER PUBLICATION \(SQL.identifier(names.publication)) SET (publish = 'insert, update, delete, truncate')")
        first.signal(SIGINT)
        #expect(await first.waitForStderr("dropped replication slot"))
        try await Task.sleep(for: .milliseconds(300))
        first.signal(SIGKILL)
        let killed = try await first.wait(timeout: 120)
        #expect(!killed.stderr.contains("stage=Complete"))
        try await blocker.execute("ROLLBACK")

        let resumed = try await CLI.run(arguments + ["--resume"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stderr.contains("removing the replication objects it left"))
        #expect(resumed.stderr.contains("dropped publication"))
        #expect(!resumed.stderr.contains("stage=Dump") && !resumed.stderr.contains("stage=Lag"))
        try await Self.expectEqual(sourceDatabase, targetDatabase)
        #expect(try await Self.replicationObjects(names) == (false, false))
        let publication = try await writer.scalar("SELECT count(*) FROM pg_publication WHERE pubname = $1", [names.publication])
        #expect(publication == "0")
        _ = target
    }

    @Test("a crash of the target while the run is stopped empties its unlogged tables: the re-attach copies them again")
    func reattachAfterTargetCrash() async throws {
        let source = try await TestCluster.start(name: "reattach-crash-source")
        let target = try await TestCluster.start(name: "reattach-crash-target")
        defer {
            source.stop()
            target.stop()
        }
        let database = try await source.createDatabase("app")
        let setup = try await source.connect(database: database)
        try await setup.execute(
            "CREATE TABLE kept (id int PRIMARY KEY, v text); INSERT INTO kept SELECT g, 'k' FROM generate_series(1, 500) g; "
                + "CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY, v text); "
                + "INSERT INTO scratch SELECT g, md5(g::text) FROM generate_series(1, 2000) g")
        var config = MigrationConfig(
            mode: .online, source: try source.connectionString(database: database),
            target: try target.connectionString(database: database), jobs: 2)
        config.online.pollInterval = .milliseconds(300)
        config.online.fastPollInterval = .milliseconds(100)
        let state = Self.stateDirectory()
        config.stateDirectory = state
        defer { try? FileManager.default.removeItem(atPath: state) }
        let streaming = EventLog()
        let (_, first) = try await OnlineMigrationTests.startStreaming(config, events: streaming)
        while !streaming.stages.contains(.lag) { try await Task.sleep(for: .milliseconds(50)) }
        first.cancel()
        await #expect(throws: MigrationCancelled.self) { try await first.value }

        // (Test servers run with synchronous_commit off: what the run committed is made durable before the crash.)
        try await target.connect(database: database).execute("CHECKPOINT")
        try await target.crashAndRestart()
        let crashed = try await target.connect(database: database)
        #expect(try await crashed.scalar("SELECT count(*) FROM scratch") == "0", "crash recovery emptied the unlogged table")
        try await setup.execute("INSERT INTO kept VALUES (501, 'while stopped')")

        var resume = config
        resume.resume = true
        let events = EventLog()
        let (migrator, second) = try await OnlineMigrationTests.startStreaming(resume, events: events)
        migrator.cutoverHandle.request()
        _ = try await second.value
        #expect(events.all.contains { $0.message.contains("re-attached") })
        #expect(events.all.contains { $0.message.contains("copied unlogged table public.scratch again (2000 rows)") })
        try await OnlineMigrationTests.expectSameContent(source, target, database: database)
    }

}
