import Foundation
import PGDBMigrator
import PostgresClient
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Operating a live migration from outside its process: the control socket (`status`, `cutover`,
/// `abort`) and the HTTP endpoints of `--listen`, against real servers while an application writes.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct ControlTests {
    static func stateDirectory(_ name: String) throws -> String {
        let directory = try TestCluster.makeDirectory(name: name)
        chown(directory, getuid(), getgid())
        chmod(directory, 0o700)
        return directory
    }

    /// Polls `status --json` of the migration in `stateDirectory` until `done` holds for it.
    static func waitForStatus(
        _ stateDirectory: String, timeout: Double = 120, _ done: (MigrationStatus) -> Bool
    ) async throws -> MigrationStatus {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let result = try await CLI.run(["status", "--state-dir", stateDirectory, "--json"])
            if result.status == 0, let status = try? MigrationStatus.decoder.decode(MigrationStatus.self, from: Data(result.stdout.utf8)),
                done(status)
            {
                return status
            }
            if Date() > deadline { throw TestSupportError("status never got there; last answer: \(result.stdout) \(result.stderr)") }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    @Test(
        "cutover from a second process: refused during the copy (which goes on), then once for two requests, losing nothing; status on a terminal"
    )
    func cutoverFromAnotherProcess() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OfflineMigrationTests.sampleSource()
        let targetDatabase = SharedClusters.uniqueName("controlled")
        let stateDirectory = try Self.stateDirectory("control")
        let suffix = SharedClusters.uniqueName("c")
        // A table large enough that the copy lasts a few seconds: the first cutover is asked for during it.
        let bulk = try await source.connect(database: database)
        try await bulk.execute("CREATE TABLE public.bulk (id int PRIMARY KEY, v text)")
        try await bulk.fill("public.bulk", rows: 1_500_000, select: "g, repeat(md5(g::text), 3)")
        await bulk.close()
        let migration = try CLI.start([
            "--mode", "online", "--source", source.url(database: database), "--target", target.url(database: targetDatabase),
            "--state-dir", stateDirectory, "--slot-name", "slot_\(suffix)", "--publication", "pub_\(suffix)",
            "--subscription-name", "sub_\(suffix)", "--freeze-source-at-cutover", "--cutover-poll-secs", "0.5",
            "--cutover-fast-poll-ms", "100",
        ])
        _ = try await Self.waitForStatus(stateDirectory) { $0.phase == "Restore" }
        let early = try await CLI.run(["cutover", "--state-dir", stateDirectory])
        #expect(early.status == 1, "\(early.stdout) \(early.stderr)")
        #expect(early.stderr.contains("not streaming yet"), "\(early.stderr)")
        #expect(
            early.stderr.contains("the run is in phase Restore") || early.stderr.contains("the run is in phase Analyze"), "\(early.stderr)")

        // The copy went on: the run streams, and the application writes all along.
        #expect(await migration.waitForStderr("the target is streaming changes"), "\(migration.stderrSoFar)")
        let workload = WriteWorkload()
        try await workload.start(source, database: database)
        let ready = try await Self.waitForStatus(stateDirectory) { $0.ready && ($0.lagHistory.count >= 3) }
        #expect(ready.streaming && ready.mode == "online" && ready.notReadyReasons.isEmpty)
        #expect(ready.lag != nil && ready.copy?.tablesDone == ready.copy?.tables, "\(ready)")
        let estimate = try #require(ready.writeDowntimeEstimateSeconds)

        // A person's view: the phase, the copy's bar, the lag sparkline, the verdict.
        let view = try await TestCluster.run(
            "/usr/bin/script", ["-qc", "'\(try CLI.binary())' status --state-dir '\(stateDirectory)'", "/dev/null"])
        #expect(view.status == 0, "\(view.output)")
        #expect(view.output.contains("phase StreamApply"), "\(view.output)")
        #expect(view.output.contains("copy      [████"), "a progress bar: \(view.output)")
        #expect(view.output.range(of: "lag       [▁▂▃▄▅▆▇█]+", options: .regularExpression) != nil, "a sparkline: \(view.output)")
        #expect(view.output.contains("READY"), "\(view.output)")
        #expect(view.output.contains("\u{1B}["), "on a terminal, with colours")

        // Two operators ask at once: one cutover, both told how it ended, as the migration itself exits.
        async let first = CLI.run(["cutover", "--state-dir", stateDirectory])
        async let second = CLI.run(["cutover", "--state-dir", stateDirectory, "--json"])
        let (one, two) = try await (first, second)
        let result = try await migration.wait()
        await workload.stop()
        #expect(result.status == 0, "\(result.stderr)")
        #expect(one.status == result.status && two.status == result.status, "\(one.stderr) \(two.stderr)")
        #expect(one.stdout.contains("completed: migration complete"), "\(one.stdout)")
        let answer = try MigrationStatus.decoder.decode(MigrationResult.self, from: Data(two.stdout.utf8))
        #expect(answer.outcome == "completed" && answer.exitCode == 0)
        #expect(one.stdout.contains("barrier \(try #require(answer.barrierLSN))"), "both answers name the same barrier")
        #expect(result.stderr.components(separatedBy: "stage=Cutover cutover requested").count == 2, "one cutover: \(result.stderr)")
        #expect(result.stderr.components(separatedBy: "waiting for the target to apply up to barrier").count == 2)
        #expect(try await Fingerprint.of(target, database: targetDatabase) == Fingerprint.of(source, database: database))

        // The estimate said how long writes would stop; the cutover measured it: the same order of magnitude.
        let measured = try #require(answer.writeDowntimeSeconds)
        #expect(measured / estimate < 10 && estimate / measured < 10, "estimated \(estimate) s, measured \(measured) s")
        #expect(!FileManager.default.fileExists(atPath: stateDirectory + "/control.sock"), "the socket goes with the run")
    }

    @Test(
        "abort from a second process exits as a second Ctrl+C; the socket is its owner's only, at a short path for a deep state directory")
    func abortFromAnotherProcess() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let deep = try Self.stateDirectory("deep") + "/" + String(repeating: "d", count: 60) + "/" + String(repeating: "e", count: 60)
        let suffix = SharedClusters.uniqueName("a")
        var config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("aborted"))
        config.stateDirectory = deep
        config.online.slotName = "slot_\(suffix)"
        config.online.publication = "pub_\(suffix)"
        config.online.subscriptionName = "sub_\(suffix)"
        let migration = try CLI.start([
            "--mode", "online", "--source", source.url(database: database), "--target",
            target.url(database: config.target.resolvedDatabase!),
            "--state-dir", deep, "--slot-name", config.online.slotName, "--publication", config.online.publication,
            "--subscription-name", config.online.subscriptionName,
        ])
        #expect(await migration.waitForStderr("the target is streaming changes"), "\(migration.stderrSoFar)")

        let socket = ControlSocket.path(forStateDirectory: deep)
        #expect(socket.hasPrefix("/tmp/pg_dbmigrator-\(getuid())/") && socket.utf8.count <= 107, "\(socket)")
        #expect(migration.stderrSoFar.contains("control socket \(socket)"))
        var info = stat()
        #expect(lstat(socket, &info) == 0 && info.st_mode & S_IFMT == S_IFSOCK)
        #expect(info.st_mode & 0o777 == 0o600 && info.st_uid == getuid(), "mode \(info.st_mode & 0o777)")
        #expect(lstat((socket as NSString).deletingLastPathComponent, &info) == 0 && info.st_mode & 0o777 == 0o700)
        if TestCluster.isRoot {
            // Another OS user is turned away by the kernel, before a byte is read.
            let other = try await TestCluster.run(
                "/usr/sbin/runuser",
                [
                    "-u", "postgres", "--", "python3", "-c",
                    "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1])\nexcept PermissionError:\n sys.exit(13)",
                    socket,
                ])
            #expect(other.status == 13, "another OS user reached the control socket: \(other.output)")
        }
        let status = try await CLI.run(["status", "--state-dir", deep, "--json"])
        #expect(status.status == 0 && status.stdout.contains("\"streaming\":true"), "\(status.stdout) \(status.stderr)")

        let abort = try await CLI.run(["abort", "--state-dir", deep])
        let result = try await migration.wait()
        #expect(result.status == 130, "as a second Ctrl+C: \(result.stderr)")
        #expect(abort.status == result.status, "\(abort.stdout) \(abort.stderr)")
        #expect(abort.stdout.contains("aborted"), "\(abort.stdout)")
        #expect(result.stderr.contains("aborted by an abort request"), "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: socket))
        let gone = try await CLI.run(["status", "--state-dir", deep])
        #expect(gone.status == 1 && gone.stderr.contains("no migration is running here"), "\(gone.stderr)")
        // Left in place, as an abort does, for --resume or cleanup.
        let objects = try await OnlineMigrationTests.replicationObjects(config)
        #expect(objects.slot && objects.publication && objects.subscription == "false")
        try await OnlineMigrationTests.removeReplicationObjects(config)
    }

    @Test("a migration started without --state-dir is found by its --target; cutover --no-wait returns once requested")
    func foundByTarget() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let targetURL = target.url(database: SharedClusters.uniqueName("by_target"))
        let suffix = SharedClusters.uniqueName("t")
        let migration = try CLI.start([
            "--mode", "online", "--source", source.url(database: database), "--target", targetURL, "--slot-name", "slot_\(suffix)",
            "--publication", "pub_\(suffix)", "--subscription-name", "sub_\(suffix)", "--cutover-poll-secs", "0.5",
        ])
        #expect(await migration.waitForStderr("the target is streaming changes"), "\(migration.stderrSoFar)")
        let status = try await CLI.run(["status", "--target", targetURL, "--json"])
        #expect(status.status == 0 && status.stdout.contains("\"streaming\":true"), "\(status.stdout) \(status.stderr)")
        // Another target has no migration running.
        let elsewhere = try await CLI.run(["status", "--target", target.url(database: "no_migration_here")])
        #expect(elsewhere.status == 1 && elsewhere.stderr.contains("no migration is running here"), "\(elsewhere.stderr)")

        let requested = try await CLI.run(["cutover", "--target", targetURL, "--no-wait"])
        // Answered once requested, not with how the cutover ended (which waiting for it prints).
        #expect(requested.status == 0 && requested.stdout.contains("cutover requested"), "\(requested.stdout) \(requested.stderr)")
        #expect(!requested.stdout.contains("completed"), "\(requested.stdout)")
        let result = try await migration.wait()
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stderr.contains("migration complete"), "\(result.stderr)")
    }

    @Test("HTTP: a token guards every endpoint, readiness follows the lag, /metrics parses as Prometheus text, two POSTs make one cutover")
    func http() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource()
        let targetDatabase = SharedClusters.uniqueName("http")
        let tokenFile = try Self.stateDirectory("token") + "/token"
        let token = UUID().uuidString
        try token.write(toFile: tokenFile, atomically: true, encoding: .utf8)
        chmod(tokenFile, 0o600)
        let config = try await OnlineMigrationTests.config(source: database, target: targetDatabase) {
            $0.listen = "127.0.0.1:0"
            $0.listenTokenFile = tokenFile
            $0.stateDirectory = try? Self.stateDirectory("http")
            $0.online.lagThresholdBytes = 200_000
        }
        let events = EventLog()
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: events)
        let port = try #require(
            events.all.compactMap { event -> Int? in
                if case .int(let port) = event.detail["listen_port"] { port } else { nil }
            }.first)
        let base = "http://127.0.0.1:\(port)"

        // Without the token, or with a wrong one: 401, and nothing happens.
        #expect(try await Self.http("GET", base + "/status").status == 401)
        #expect(try await Self.http("POST", base + "/cutover", token: "wrong-\(token)").status == 401)
        #expect(try await Self.http("POST", base + "/abort", token: String(token.dropLast())).status == 401)
        try await Task.sleep(for: .milliseconds(300))
        #expect(migrator.control.status.cutover.state == "not_requested" && migrator.control.abortCause == nil)

        func ready() async throws -> Int { try await Self.http("GET", base + "/ready", token: token).status }
        func waitFor(ready expected: Int) async throws {
            let deadline = Date().addingTimeInterval(60)
            while try await ready() != expected {
                if Date() > deadline { throw TestSupportError("/ready never answered \(expected): \(migrator.control.status)") }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        try await waitFor(ready: 200)
        // The apply worker waits on a lock while the source writes a few MB: the target falls behind, then catches up.
        let targetSession = try await target.connect(database: targetDatabase)
        try await targetSession.execute("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        let writer = try await source.connect(database: database)
        try await writer.execute("UPDATE items SET v = repeat('x', 2000) || id; UPDATE items SET v = repeat('y', 2000) || id")
        try await writer.execute("INSERT INTO items SELECT g, repeat('z', 500) FROM generate_series(1000, 5000) g")
        try await waitFor(ready: 503)
        let behind = try await Self.http("GET", base + "/ready", token: token)
        #expect(String(decoding: behind.body, as: UTF8.self).contains("behind"), "the reason is given")
        try await targetSession.execute("ROLLBACK")
        try await waitFor(ready: 200)

        // /metrics, read by Prometheus' own parser.
        let metrics = try await Self.http("GET", base + "/metrics", token: token)
        #expect(metrics.status == 200)
        let parsed = try await Self.parsePrometheus(metrics.body)
        #expect(parsed["pg_dbmigrator_streaming"] == 1, "\(parsed)")
        #expect(parsed["pg_dbmigrator_ready"] == 1)
        #expect(parsed["pg_dbmigrator_lag_bytes"] != nil && parsed["pg_dbmigrator_retained_wal_bytes"] != nil)
        #expect(parsed["pg_dbmigrator_phase{phase=\"StreamApply\"}"] == 1)

        try await writer.execute("INSERT INTO items VALUES (9000, 'last')")
        async let first = Self.http("POST", base + "/cutover", token: token)
        async let second = Self.http("POST", base + "/cutover", token: token)
        let (one, two) = try await (first, second)
        _ = try await run.value
        #expect(one.status == 200 && two.status == 200)
        let results = try [one, two].map { try MigrationStatus.decoder.decode(MigrationResult.self, from: $0.body) }
        #expect(results[0] == results[1] && results[0].outcome == "completed", "\(results)")
        #expect(events.all.filter { $0.message == "cutover requested" }.count == 1, "one cutover")
        #expect(try await Fingerprint.of(target, database: targetDatabase) == Fingerprint.of(source, database: database))
    }

    @Test("--listen beyond loopback needs a token file, and the token file must be its owner's only")
    func listenArguments() async throws {
        let common = ["--mode", "online", "--source", "postgresql://127.0.0.1:1/a", "--target", "postgresql://127.0.0.1:2/b", "--json"]
        let open = try await CLI.run(common + ["--listen", "0.0.0.0:9187"])
        #expect(open.status == 64 && open.failureCode == "invalid_argument", "\(open.stdout)")
        #expect(open.stderr.contains("--listen-token-file"), "\(open.stderr)")
        let tokenFile = try Self.stateDirectory("token") + "/token"
        try "0123456789abcdef0123456789abcdef".write(toFile: tokenFile, atomically: true, encoding: .utf8)
        chmod(tokenFile, 0o644)
        let readable = try await CLI.run(common + ["--listen", "0.0.0.0:9187", "--listen-token-file", tokenFile])
        #expect(readable.status == 64 && readable.stderr.contains("chmod 600"), "\(readable.stderr)")
        let name = try await CLI.run(common + ["--listen", "db.example.com:9187"])
        #expect(name.status == 64 && name.stderr.contains("IP address"), "\(name.stderr)")
    }

    static func http(_ method: String, _ url: String, token: String? = nil) async throws -> (status: Int, body: Data) {
        var request = URLRequest(url: URL(string: url)!)
        request.httpMethod = method
        request.timeoutInterval = 300
        if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        let (body, response) = try await URLSession.shared.data(for: request)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, body)
    }

    /// Each sample as `name{labels}` → value, by the Python client's parser (`scripts/test.sh` installs it).
    static func parsePrometheus(_ text: Data) async throws -> [String: Double] {
        guard
            let path = ProcessInfo.processInfo.environment["PGDM_PROMETHEUS_PYTHONPATH"]
                ?? Optional("/tmp/pg_dbmigrator-prometheus-client-0.21.1"),
            FileManager.default.fileExists(atPath: path + "/prometheus_client/parser.py")
        else { throw TestSupportError("Prometheus' Python parser is not installed; run scripts/test.sh, which installs it") }
        let file = NSTemporaryDirectory() + "metrics-\(UUID().uuidString).txt"
        try text.write(to: URL(fileURLWithPath: file))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let script = """
            import sys
            from prometheus_client.parser import text_string_to_metric_families
            for family in text_string_to_metric_families(open(sys.argv[1]).read()):
                for s in family.samples:
                    labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
                    print("%s%s %r" % (s.name, "{%s}" % labels if labels else "", s.value))
            """
        let result = try await TestCluster.run("/usr/bin/env", ["python3", "-c", script, file], environment: ["PYTHONPATH": path])
        guard result.status == 0 else { throw TestSupportError("Prometheus' parser refused /metrics: \(result.output)") }
        var samples: [String: Double] = [:]
        for line in result.output.split(separator: "\n") {
            guard let space = line.lastIndex(of: " ") else { continue }
            samples[String(line[..<space])] = Double(line[line.index(after: space)...]) ?? .nan
        }
        return samples
    }
}
