import Foundation
import PGDBMigrator
import PostgresClient
import Testing

/// The command-line tool as operators run it: exit codes, messages, JSON, signals, secrets.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct CLITests {
    static let trickyPassword = "p@ss:w/rd?#%&=+ 'q\"\\x"

    /// A login role whose password has every character that means something in a URI or a conninfo string.
    static func trickyRole() async throws -> String {
        let (source, target) = try await SharedClusters.get()
        let role = SharedClusters.uniqueName("mig@user")
        for cluster in [source, target] {
            let admin = try await cluster.connect()
            try await admin.execute(
                "CREATE ROLE \(SQL.identifier(role)) LOGIN SUPERUSER PASSWORD \(SQL.literal(trickyPassword))")
            await admin.close()
        }
        return role
    }

    @Test("a password with URI-special characters works and never shows in any process's argv, log or event")
    func passwordNeverExposed() async throws {
        let (source, target) = try await SharedClusters.get()
        let role = try await Self.trickyRole()
        let sourceDatabase = try await OfflineMigrationTests.sampleSource()
        let targetDatabase = SharedClusters.uniqueName("secret_copy")
        let sourceURL = source.url(database: sourceDatabase, user: role, password: Self.trickyPassword)
        let targetURL = target.url(database: targetDatabase, user: role, password: Self.trickyPassword)
        #expect(sourceURL.contains("%40"))  // the URI really carries percent-encoded parts

        let watcher = CommandLineWatcher()
        watcher.start()
        let result = try await CLI.run(
            ["--mode", "offline", "--json", "--verbose", "--jobs", "2"],
            environment: ["PG_DBMIGRATOR_SOURCE": sourceURL, "PG_DBMIGRATOR_TARGET": targetURL])
        let commandLines = watcher.stop()

        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(try await Fingerprint.of(target, database: targetDatabase) == Fingerprint.of(source, database: sourceDatabase))
        // The watcher really saw the children, so the check below could have failed.
        #expect(commandLines.contains { $0.contains("pg_dump") && $0.contains("--dbname") })
        #expect(commandLines.contains { $0.contains("pg_restore") && $0.contains("--dbname") })
        let encoded = percentEncode(Self.trickyPassword)
        let leaks = commandLines.filter { $0.contains(Self.trickyPassword) || $0.contains(encoded) || $0.contains("p@ss:w") }
        #expect(leaks.isEmpty, "password in argv: \(leaks)")
        for output in [result.stdout, result.stderr] {
            #expect(!output.contains("p@ss:w"))
            #expect(!output.contains(encoded))
        }
    }

    @Test("a password given on the command line is hidden from ps once parsed")
    func ownArgvScrubbed() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await OfflineMigrationTests.sampleSource()
        // A lock that holds pg_dump in place, so the run stays alive while we look at it.
        let blocker = try await source.connect(database: sourceDatabase)
        try await blocker.execute("BEGIN; LOCK TABLE sales.orders IN ACCESS EXCLUSIVE MODE")
        let running = try CLI.start([
            "--source", source.url(database: sourceDatabase), "--target", target.url(database: SharedClusters.uniqueName("scrub")),
        ])
        #expect(await running.waitForStderr("stage=Dump"))
        let commandLine = allCommandLines().first { $0.pid == running.pid }?.arguments.joined(separator: " ") ?? ""
        running.signal(SIGTERM)
        _ = try await running.wait()
        try await blocker.execute("ROLLBACK")
        #expect(commandLine.contains("--source"))
        #expect(!commandLine.contains(percentEncode(TestCluster.superuserPassword)))
        #expect(!commandLine.contains(TestCluster.superuserPassword))
    }

    @Test("bad inputs give a clear one-line reason and a non-zero exit")
    func badInputs() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await source.createDatabase(SharedClusters.uniqueName("bad"))
        let good = target.url(database: SharedClusters.uniqueName("bad_copy"))
        let closedPort = try TestCluster.freePort()
        let wrongPassword = "WrongPassw0rd!"
        let cases: [(name: String, arguments: [String], status: Int32, expect: [String])] = [
            (
                "wrong password", ["--source", source.url(database: sourceDatabase, password: wrongPassword), "--target", good],
                1, ["cannot connect to the source", "password authentication failed"]
            ),
            (
                "unreachable host", ["--source", "postgresql://postgres:pw@127.0.0.1:\(closedPort)/x?connect_timeout=3", "--target", good],
                1, ["cannot connect to the source", "\(closedPort)"]
            ),
            (
                "missing database", ["--source", source.url(database: "no_such_db"), "--target", good],
                1, ["cannot connect to the source", "no_such_db", "does not exist"]
            ),
            (
                "malformed connection string", ["--source", "postgresql://postgres:Secr3tPw@[::1/db", "--target", good],
                64, ["--source is not a valid connection string"]
            ),
            (
                "missing pg_dump",
                ["--source", source.url(database: sourceDatabase), "--target", good, "--pg-bin-dir", "/nonexistent/bin"],
                1, ["pg_dump not found in /nonexistent/bin", "--pg-bin-dir"]
            ),
            ("missing source", ["--target", good], 64, ["missing --source"]),
        ]
        for testCase in cases {
            let result = try await CLI.run(testCase.arguments)
            #expect(result.status == testCase.status, "\(testCase.name): \(result.stderr)")
            for text in testCase.expect {
                #expect(result.stderr.contains(text), "\(testCase.name): expected '\(text)' in \(result.stderr)")
            }
            for secret in [wrongPassword, "Secr3tPw", TestCluster.superuserPassword] {
                #expect(!result.stderr.contains(secret), "\(testCase.name) leaked a password: \(result.stderr)")
            }
        }
    }

    @Test("a missing pg_dump on PATH is reported with the fix")
    func pgDumpNotOnPath() async throws {
        let (source, target) = try await SharedClusters.get()
        let result = try await CLI.run(
            ["--source", source.url(database: "postgres"), "--target", target.url(database: SharedClusters.uniqueName("nopath"))],
            environment: ["PATH": "/nonexistent"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("pg_dump not found on PATH"))
        #expect(result.stderr.contains("apt-get install postgresql-client"))
    }

    @Test("--json writes one event object per line, in phase order, ending with Complete")
    func jsonEvents() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await OfflineMigrationTests.sampleSource()
        let result = try await CLI.run([
            "--json", "--source", source.url(database: sourceDatabase),
            "--target", target.url(database: SharedClusters.uniqueName("json_copy")),
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let objects = try result.stdout.split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
        #expect(objects.count >= 5)
        for object in objects {
            #expect(object["stage"] is String && object["message"] is String && object["detail"] is [String: Any])
            #expect(object["level"] is String && object["timestamp"] is String)
        }
        let stages = objects.compactMap { $0["stage"] as? String }.reduce(into: [String]()) { if $0.last != $1 { $0.append($1) } }
        #expect(stages == ["Validate", "Dump", "Restore", "Analyze", "Verify", "Complete", "Verify"])
        #expect(objects.last?["report"] is [String: Any], "the last line is the verify report")
        let dumpDone = objects.first { ($0["message"] as? String)?.hasPrefix("dump finished") == true }
        #expect(((dumpDone?["detail"] as? [String: Any])?["bytes"] as? Int ?? 0) > 0)
    }

    /// A source and a target for the cancel tests alone.
    private static let cancelServers = TestCluster.pair("cancel")

    @Test(
        "SIGINT or SIGTERM cancels: pg_dump or the blocked statement stopped, temporary files removed, non-zero exit within seconds",
        arguments: [
            (SIGTERM, false, MigrationConfig.CopyMethod.dump), (SIGINT, false, .dump), (SIGINT, true, .dump), (SIGTERM, false, .native),
        ])
    func cancel(signal: Int32, startedWithSIGINTIgnored: Bool, copyMethod: MigrationConfig.CopyMethod) async throws {
        // Servers of their own: the blocker's ACCESS EXCLUSIVE lock takes a transaction id (it is logged for
        // standbys), and an open transaction with one holds up every other test's replication slot.
        let (source, target) = try await Self.cancelServers.get()
        let sourceDatabase = try await source.createDatabase(SharedClusters.uniqueName("shop"))
        try await source.load(file: sampleSQLPath, into: sourceDatabase)
        let blocker = try await source.connect(database: sourceDatabase)
        try await blocker.execute("BEGIN; LOCK TABLE sales.orders IN ACCESS EXCLUSIVE MODE")
        let dumpPath = NSTemporaryDirectory() + "pgdm-cancel-\(UUID().uuidString)"
        let running = try CLI.start(
            [
                "--source", source.url(database: sourceDatabase), "--target", target.url(database: SharedClusters.uniqueName("cancelled")),
                "--dump-path", dumpPath, "--copy-method", copyMethod.rawValue,
            ],
            ignoreSIGINT: startedWithSIGINTIgnored)
        #expect(await running.waitForStderr("stage=Dump"))
        // pg_dump (dump path) or our catalog session taking its locks (native) is held by the lock.
        let dumpers = {
            allCommandLines().filter { $0.arguments.first?.hasSuffix("pg_dump") == true && $0.arguments.contains { $0.contains(dumpPath) } }
        }
        // Watched from a session of its own: inside the blocker's open transaction pg_stat_activity is read once
        // and kept (a statistics snapshot per transaction), so a first look taken before the run reached its lock
        // would be all the test ever saw (the rare "never waits" failure, which was the test's).
        let observer = try await source.connect(database: sourceDatabase)
        let waitingSessions = {
            try await observer.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            )
        }
        // Under a loaded machine (CI runs every suite at once) reaching the lock can take a while; what is
        // asserted is that it is reached, then that the signal frees it within seconds.
        var held = false
        for _ in 0..<1200 where !held && running.isRunning {
            try await Task.sleep(for: .milliseconds(100))
            held = copyMethod == .dump ? !dumpers().isEmpty : try await waitingSessions() != "0"
        }
        let waitingFor = copyMethod == .dump ? "pg_dump should be running" : "the catalog session should be waiting for its lock"
        if !held {
            // What the run was doing: its threads' stacks (gdb, when there is one), for the next person to look.
            let stacks = try? await TestCluster.run(
                "/usr/bin/gdb", ["-p", String(running.pid), "-batch", "-ex", "thread apply all bt 12"])
            Issue.record("stacks of the stuck run: \(stacks?.output.suffix(20_000) ?? "gdb unavailable")")
            let sessions = try await observer.query(
                "SELECT application_name, state, wait_event_type, wait_event, left(query, 80) FROM pg_stat_activity WHERE datname = current_database()"
            ).rows
            Issue.record("\(waitingFor); sessions: \(sessions); stderr so far: \(running.stderrSoFar)")
            running.signal(SIGKILL)
            try await blocker.execute("ROLLBACK")
            return
        }

        let signalled = Date()
        running.signal(signal)
        let result = try await running.wait(timeout: 30)
        #expect(try await waitingSessions() == "0", "a statement of ours still waits on the source")
        try await blocker.execute("ROLLBACK")
        #expect(Date().timeIntervalSince(signalled) < 10)
        #expect(result.status == 128 + signal, "\(result.stderr)")
        #expect(result.stderr.contains("aborted by \(signal == SIGTERM ? "SIGTERM" : "SIGINT")"))
        #expect(dumpers().isEmpty, "pg_dump left running")
        #expect(!FileManager.default.fileExists(atPath: dumpPath), "dump directory left behind")
    }

    @Test("on a terminal, copy progress is one live line rewritten in place; in a log, plain lines")
    func liveProgress() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await OfflineMigrationTests.sampleSource()
        let environment = [
            "PG_DBMIGRATOR_SOURCE": source.url(database: sourceDatabase),
            "PG_DBMIGRATOR_TARGET": target.url(database: SharedClusters.uniqueName("live")),
        ]
        // script(1) gives the tool a pseudo-terminal and copies what it shows to our pipe.
        let onTerminal = try await TestCluster.run(
            "/usr/bin/script", ["-qefc", "\(try CLI.binary()) --verify off", "/dev/null"], environment: environment)
        #expect(onTerminal.status == 0, "\(onTerminal.output)")
        #expect(onTerminal.output.contains("\r\u{1B}[Kcopy progress: "), "\(onTerminal.output)")
        #expect(onTerminal.output.contains("\r\u{1B}[KINFO stage=Restore"), "the next event replaces the live line")

        let inLog = try await CLI.run(
            ["--verify", "off"],
            environment: [
                "PG_DBMIGRATOR_SOURCE": source.url(database: sourceDatabase),
                "PG_DBMIGRATOR_TARGET": target.url(database: SharedClusters.uniqueName("log")),
            ])
        #expect(inLog.status == 0)
        #expect(inLog.stderr.contains("INFO stage=Restore copy progress: "))
        #expect(!inLog.stderr.contains("\u{1B}["))
    }

    @Test("--help names the subcommands; migrate --help lists every flag with its help text")
    func help() async throws {
        let overview = try await CLI.run(["--help"])
        #expect(overview.status == 0)
        for subcommand in ["migrate (default)", "status", "cutover", "abort", "pg_dbmigrator migrate --help"] {
            #expect(overview.stdout.contains(subcommand), "\(subcommand) missing from --help")
        }
        let result = try await CLI.run(["migrate", "--help"])
        #expect(result.status == 0)
        for flag in [
            "--mode", "--source", "--target", "--jobs", "--drop-target-first", "--exclude-schema", "--exclude-table",
            "--schema", "--table", "--allow-restore-errors", "--dump-scope", "--dump-path", "--skip-analyze", "--json",
            "--no-owner", "--no-acl", "--pg-bin-dir", "PG_DBMIGRATOR_SOURCE", "PG_DBMIGRATOR_TARGET",
            "--copy-method", "--index-jobs", "--split-tables-larger-than", "--listen", "--listen-token-file",
        ] {
            #expect(result.stdout.contains(flag), "\(flag) missing from migrate --help")
        }
        for subcommand in ["status", "cutover", "abort"] {
            let help = try await CLI.run([subcommand, "--help"])
            #expect(help.status == 0 && help.stdout.contains("--state-dir") && help.stdout.contains("--target"), "\(help.stdout)")
        }
    }

    @Test("the tests see a child exit before anyone reaps it (Process once left one unreaped for minutes), and leave it to its owner")
    func exitSeenBeforeReaping() async throws {
        var pid: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = ["/bin/sh", "-c", "exit 3"].map { (word: String) in strdup(word) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        #expect(posix_spawn(&pid, "/bin/sh", nil, nil, argv, environ) == 0)
        var status: Int32?
        for _ in 0..<500 where status == nil {
            status = CLI.Running.exited(pid)
            if status == nil { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(status == 3)
        // Still there for its owner to reap.
        var raw: Int32 = 0
        #expect(waitpid(pid, &raw, WNOHANG) == pid && (raw >> 8) & 0xff == 3)
    }
}
