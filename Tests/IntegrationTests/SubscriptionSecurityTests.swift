import Foundation
import PostgresClient
import Testing

@testable import PGDBMigrator

/// The subscription the target server opens back to the source is held to the
/// tool's own standard: TLS as strict, secrets nowhere but `pg_subscription`,
/// and every way it could fail found at Validate, before the slot exists.
///
/// The source here requires TLS and a client certificate (whose key is
/// encrypted: libpq needs `sslpassword`) from role `migrator`; the target runs
/// with every statement logged and `pg_stat_statements.track = all`, the
/// settings that would catch a password in any statement text.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct SubscriptionSecurityTests {
    static let role = "migrator"
    static let rolePassword = "Src-Secret-\(UUID().uuidString.prefix(8))"

    struct Servers {
        var tls: TLSFiles
        var source: TestCluster
        var target: TestCluster
    }

    private static let holder = StartedOnce { try await SubscriptionSecurityTests.startServers() }

    static func startServers() async throws -> Servers {
        let tls = try await TLSFiles.make(clientName: role)
        let source = try await TestCluster.start(name: "tls-source", settings: tls.serverSettings)
        // migrator may only come in over TLS with a certificate naming it; the tests' own sessions need neither.
        let hba = source.dataDirectory + "/pg_hba.conf"
        let rules =
            "hostssl all \(role) 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n"
            + "hostssl replication \(role) 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n"
            + "host all \(role) 127.0.0.1/32 reject\nhost replication \(role) 127.0.0.1/32 reject\n"
        try (rules + (try String(contentsOfFile: hba, encoding: .utf8))).write(toFile: hba, atomically: false, encoding: .utf8)
        let admin = try await source.connect()
        try await admin.execute("CREATE ROLE \(role) LOGIN SUPERUSER PASSWORD \(SQL.literal(rolePassword)); SELECT pg_reload_conf()")
        await admin.close()
        let target = try await TestCluster.start(
            name: "pgss-target",
            settings: [
                "shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all", "log_statement": "all",
                "log_min_messages": "info",
            ])
        let targetAdmin = try await target.connect()
        try await targetAdmin.execute("CREATE EXTENSION pg_stat_statements")
        await targetAdmin.close()
        return Servers(tls: tls, source: source, target: target)
    }

    /// A source database with one table of rows.
    static func sourceDatabase(_ servers: Servers) async throws -> String {
        let name = try await servers.source.createDatabase(SharedClusters.uniqueName("tls_source"))
        let connection = try await servers.source.connect(database: name)
        try await connection.execute(
            "CREATE TABLE items (id int PRIMARY KEY, note text); INSERT INTO items SELECT i, md5(i::text) FROM generate_series(1, 500) i")
        await connection.close()
        return name
    }

    /// The source as the tool is told to reach it: host, port, user and database only; the
    /// password and TLS settings come from the environment (see ``environment(_:)``).
    static func sourceString(_ servers: Servers, database: String) -> String {
        "host=127.0.0.1 port=\(servers.source.port) user=\(role) dbname=\(database)"
    }

    /// TLS as a security-minded DBA sets it once, in the environment; the password there too.
    static func environment(_ servers: Servers) -> [String: String] {
        [
            "PGSSLMODE": "verify-full", "PGSSLROOTCERT": servers.tls.caCertificate, "PGSSLCERT": servers.tls.clientCertificate,
            "PGSSLKEY": servers.tls.clientKey, "PGPASSWORD": rolePassword,
        ]
    }

    /// Every secret of the run, and every place on the target it must not be.
    static func assertNoSecret(_ secrets: [String], on target: TestCluster, alsoIn texts: [String: String]) async throws {
        let admin = try await target.connect()
        let statements = try await admin.query("SELECT query FROM pg_stat_statements").rows.compactMap { $0[0] }
        #expect(!statements.isEmpty, "pg_stat_statements records nothing: the check below would prove nothing")
        await admin.close()
        var logs = ""
        let logDirectory = target.dataDirectory + "/log"
        for file in (try? FileManager.default.contentsOfDirectory(atPath: logDirectory)) ?? [] {
            logs += (try? String(contentsOfFile: logDirectory + "/" + file, encoding: .utf8)) ?? ""
        }
        #expect(logs.contains("statement:"), "the target logs no statements: the check below would prove nothing")
        for secret in secrets {
            #expect(!statements.contains { $0.contains(secret) }, "pg_stat_statements holds a secret")
            let leaks = logs.split(separator: "\n").filter { $0.contains(secret) }
            #expect(leaks.isEmpty, "the target's log holds a secret: \(leaks.joined(separator: "\n"))")
            for (place, text) in texts {
                let leaks = text.split(separator: "\n").filter { $0.contains(secret) }
                #expect(leaks.isEmpty, "\(place) holds a secret: \(leaks.joined(separator: "\n"))")
            }
        }
    }

    @Test(
        "TLS from the environment reaches the subscription, an untrusted certificate stops the apply, and no secret leaves pg_subscription"
    )
    func tlsAndSecretsCarryOver() async throws {
        let servers = try await Self.holder.get()
        let database = try await Self.sourceDatabase(servers)
        let targetDatabase = SharedClusters.uniqueName("tls_target")
        let stateDirectory = try TestCluster.makeDirectory(name: "tls-state")
        let sslPassword = servers.tls.clientKeyPassphrase
        let watcher = CommandLineWatcher()
        watcher.start()
        // The connection strings in the environment, as the README advises: argv is everyone's to read.
        var environment = Self.environment(servers)
        environment["PG_DBMIGRATOR_SOURCE"] = Self.sourceString(servers, database: database) + " sslpassword='\(sslPassword)'"
        environment["PG_DBMIGRATOR_TARGET"] = servers.target.url(database: targetDatabase) + "?sslmode=disable"
        let running = try CLI.start(
            [
                "--mode", "online", "--state-dir", stateDirectory, "--cutover-poll-secs", "0.5", "--no-owner", "--no-acl", "--apply",
                "subscription",
            ],
            environment: environment)

        // Sampled while the tool runs: the target's sessions and the run's state files.
        let targetAdmin = try await servers.target.connect()
        var activity = "", stateFiles = ""
        while running.isRunning, !running.stderrSoFar.contains("the target is streaming changes") {
            activity += try await targetAdmin.query("SELECT query FROM pg_stat_activity").rows.compactMap { $0[0] }.joined(separator: "\n")
            for file in (try? FileManager.default.subpathsOfDirectory(atPath: stateDirectory)) ?? [] {
                stateFiles += (try? String(contentsOfFile: stateDirectory + "/" + file, encoding: .utf8)) ?? ""
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(running.stderrSoFar.contains("the target is streaming changes"), "\(running.stderrSoFar)")
        #expect(!stateFiles.isEmpty, "no state file was sampled: the check below would prove nothing")

        // What the target's apply worker connects with: the environment's TLS, made explicit, and the secrets.
        let conninfo = try ConnectionString(
            try await targetAdmin.scalar("SELECT subconninfo FROM pg_subscription WHERE subname = 'pg_dbmigrator_sub'") ?? "")
        #expect(conninfo["sslmode"] == "verify-full")
        #expect(conninfo["sslrootcert"] == servers.tls.caCertificate)
        #expect(conninfo["sslcert"] == servers.tls.clientCertificate && conninfo["sslkey"] == servers.tls.clientKey)
        #expect(conninfo["sslpassword"] == sslPassword && conninfo.password == Self.rolePassword)
        #expect(conninfo["application_name"] == nil && conninfo["passfile"] == nil)
        let sourceAdmin = try await servers.source.connect(database: database)
        var walsender: [String?]?
        for _ in 0..<150 where walsender == nil {
            walsender = try await sourceAdmin.query(
                "SELECT s.ssl::text, s.client_dn FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.application_name = 'pg_dbmigrator_sub'"
            ).rows.first
            if walsender == nil { try await Task.sleep(for: .milliseconds(200)) }
        }
        #expect(
            walsender?[0] == "true" && walsender?[1] == "/CN=\(Self.role)",
            "the apply worker's connection: \(String(describing: walsender))")

        // A certificate from a CA nobody trusts: the apply worker refuses it rather than streaming.
        try servers.tls.presentRogueCertificate(true)
        try await sourceAdmin.execute(
            "SELECT pg_reload_conf(); SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = 'pg_dbmigrator_sub'"
        )
        try await sourceAdmin.execute("INSERT INTO items VALUES (100001, 'while the certificate was untrusted')")
        let target = try await servers.target.connect(database: targetDatabase)
        var refused = false
        for _ in 0..<150 where !refused {
            try await Task.sleep(for: .milliseconds(200))
            let log =
                (try? FileManager.default.contentsOfDirectory(atPath: servers.target.dataDirectory + "/log"))?.compactMap {
                    try? String(contentsOfFile: servers.target.dataDirectory + "/log/" + $0, encoding: .utf8)
                }.joined() ?? ""
            refused = log.contains("certificate verify failed")
        }
        #expect(refused, "the apply worker never refused the untrusted certificate")
        #expect(
            try await target.scalar("SELECT count(*) FROM items WHERE id = 100001") == "0", "a row streamed over an untrusted connection")

        // The trusted certificate back: the worker reconnects and the row arrives.
        try servers.tls.presentRogueCertificate(false)
        try await sourceAdmin.execute("SELECT pg_reload_conf()")
        var arrived = false
        for _ in 0..<300 where !arrived {
            try await Task.sleep(for: .milliseconds(200))
            arrived = try await target.scalar("SELECT count(*) FROM items WHERE id = 100001") == "1"
        }
        #expect(arrived, "the apply worker did not resume with the trusted certificate")
        await target.close()
        await sourceAdmin.close()
        await targetAdmin.close()

        running.signal(SIGINT)
        let result = try await running.wait(timeout: 120)
        let argv = watcher.stop()
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stderr.contains("migration complete"))
        #expect(argv.contains { $0.contains("pg_dump") && $0.contains("service=pg_dbmigrator") }, "pg_dump was never seen")
        try await Self.assertNoSecret(
            [Self.rolePassword, sslPassword], on: servers.target,
            alsoIn: [
                "argv": argv.joined(separator: "\n"), "pg_stat_activity": activity, "state files": stateFiles,
                "stderr": result.stderr, "stdout": result.stdout,
            ])
    }

    @Test("each way the subscription could fail after the copy fails at Validate instead, before the slot exists, leaving no secret")
    func lateFailuresComeFirst() async throws {
        let servers = try await Self.holder.get()
        let database = try await Self.sourceDatabase(servers)
        let (plainSource, _) = try await SharedClusters.get()
        let plainDatabase = try await OfflineMigrationTests.sampleSource()
        let home = try TestCluster.makeDirectory(name: "home")
        try FileManager.default.createDirectory(atPath: home + "/.postgresql", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: servers.tls.caCertificate, toPath: home + "/.postgresql/root.crt")
        var withoutRootCert = Self.environment(servers)
        withoutRootCert["PGSSLROOTCERT"] = nil
        withoutRootCert["HOME"] = home
        let tlsSource = Self.sourceString(servers, database: database) + " sslpassword='\(servers.tls.clientKeyPassphrase)'"

        let cases: [(name: String, source: String, extra: [String], environment: [String: String], expected: String)] = [
            // libpq's default CA file is in the tool's home; the target server has none there.
            ("a CA file that exists only on the migration host", tlsSource, [], withoutRootCert, "root certificate file"),
            (
                "sslmode=require in --subscription-source against a server without TLS", plainSource.url(database: plainDatabase),
                ["--subscription-source", plainSource.url(database: plainDatabase) + "?sslmode=require"], [:], "does not support SSL"
            ),
            (
                "a --subscription-source weaker than the tool's own TLS", tlsSource,
                [
                    "--subscription-source",
                    "host=127.0.0.1 port=\(servers.source.port) user=\(Self.role) dbname=\(database) sslmode=prefer",
                ],
                Self.environment(servers), "weaker than the sslmode=verify-full"
            ),
            (
                "a wrong password for the subscription", tlsSource,
                [
                    "--subscription-source",
                    Self.sourceString(servers, database: database) + " password=Wrong-Pw-123 "
                        + "sslmode=verify-full sslrootcert=\(servers.tls.caCertificate) sslcert=\(servers.tls.clientCertificate) "
                        + "sslkey=\(servers.tls.clientKey) sslpassword='\(servers.tls.clientKeyPassphrase)'",
                ],
                Self.environment(servers), "password authentication failed"
            ),
        ]
        for testCase in cases {
            let slot = "slot_" + SharedClusters.uniqueName("late")
            let result = try await CLI.run(
                [
                    "--mode", "online", "--source", testCase.source,
                    "--target", servers.target.url(database: SharedClusters.uniqueName("late")) + "?sslmode=disable", "--slot-name", slot,
                    "--state-dir", try TestCluster.makeDirectory(name: "late-state"), "--no-owner", "--no-acl",
                    // (Under the default --apply auto, a subscription that cannot work gives way to relay apply.)
                    "--apply", "subscription",
                ] + testCase.extra,
                environment: testCase.environment)
            #expect(result.status == 1, "\(testCase.name): \(result.stderr)")
            #expect(result.stderr.contains("stage=Validate"), "\(testCase.name): \(result.stderr)")
            #expect(result.stderr.contains(testCase.expected), "\(testCase.name): \(result.stderr)")
            #expect(!result.stderr.contains("created replication slot"), "\(testCase.name)")
            for cluster in [servers.source, plainSource] {
                let admin = try await cluster.connect()
                #expect(try await admin.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", [slot]) == "0")
                await admin.close()
            }
            for secret in [Self.rolePassword, servers.tls.clientKeyPassphrase, "Wrong-Pw-123", TestCluster.superuserPassword] {
                #expect(!result.stderr.contains(secret), "\(testCase.name) printed a secret")
            }
        }
        let targetAdmin = try await servers.target.connect()
        #expect(try await targetAdmin.scalar("SELECT count(*) FROM pg_subscription") == "0", "a probe subscription was left behind")
        await targetAdmin.close()
        try await Self.assertNoSecret(
            [Self.rolePassword, servers.tls.clientKeyPassphrase, "Wrong-Pw-123", TestCluster.superuserPassword], on: servers.target,
            alsoIn: [:])
    }
}
