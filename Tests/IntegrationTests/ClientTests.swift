import CLibPQ
import Foundation
import PGDBMigrator
import PostgresClient
import Testing

/// PostgresClient against a real server: parameters, errors, COPY in batches.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct ClientTests {
    @Test("queries take $n text parameters and return text rows; NULL is nil")
    func parameters() async throws {
        let (source, _) = try await SharedClusters.get()
        let connection = try await source.connect()
        let result = try await connection.query("SELECT $1::int + 1 AS n, $2::text AS t, NULL::text AS z", ["41", "it's \"quoted\""])
        #expect(result.columns == ["n", "t", "z"])
        #expect(result.rows == [["42", "it's \"quoted\"", nil]])
    }

    @Test("server errors carry SQLSTATE, detail and hint")
    func errors() async throws {
        let (source, _) = try await SharedClusters.get()
        let connection = try await source.connect()
        let error = await #expect(throws: PostgresError.self) { try await connection.query("SELECT * FROM no_such_table") }
        #expect(error?.sqlState == "42P01")
        #expect(error?.kind == .server)
        #expect(error?.message.contains("no_such_table") == true)
        // The connection is still usable afterwards.
        #expect(try await connection.scalar("SELECT 1") == "1")
    }

    @Test("COPY out of one server into another in batches of at least 64 KiB, content equal")
    func copyBetweenServers() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = SharedClusters.uniqueName("copy")
        try await source.createDatabase(database)
        try await target.createDatabase(database)
        let from = try await source.connect(database: database)
        let to = try await target.connect(database: database)
        let ddl = "CREATE TABLE t (id int PRIMARY KEY, payload text, data bytea)"
        try await from.execute(
            ddl
                + "; INSERT INTO t SELECT g, repeat(md5(g::text), 5) || E'\\t\\n\\\\', decode(md5(g::text), 'hex') FROM generate_series(1, 20000) g"
        )
        try await to.execute(ddl)

        try await from.beginCopyOut("COPY t TO STDOUT")
        try await to.beginCopyIn("COPY t FROM STDIN")
        var batchSizes: [Int] = []
        while let batch = try await from.readCopyBatch() {
            batchSizes.append(batch.count)
            try await to.writeCopyData(batch)
        }
        let rows = try await to.endCopyIn()

        #expect(rows == 20000)
        #expect(batchSizes.count > 2)
        #expect(batchSizes.dropLast().allSatisfy { $0 >= 64 * 1024 })
        let expected = try await Fingerprint.of(source, database: database)
        let actual = try await Fingerprint.of(target, database: database)
        #expect(actual == expected, "\(actual.differences(from: expected))")
    }

    @Test("a failing COPY IN reports the server's error")
    func copyInError() async throws {
        let (source, _) = try await SharedClusters.get()
        let connection = try await source.connect()
        try await connection.execute("CREATE TEMP TABLE c (id int)")
        try await connection.beginCopyIn("COPY c FROM STDIN")
        try await connection.writeCopyData(Array("1\nnot-a-number\n".utf8))
        let error = await #expect(throws: PostgresError.self) { try await connection.endCopyIn() }
        #expect(error?.sqlState == "22P02")
    }

    @Test("keyword=value over a unix socket and a URI with query options reach pg_dump and pg_restore intact")
    func connectionStringForms() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await OfflineMigrationTests.sampleSource()
        let targetDatabase = SharedClusters.uniqueName("forms")
        let socketSource = try ConnectionString(
            "host=\(source.socketDirectory) port=\(source.port) user=postgres dbname=\(sourceDatabase) password=\(TestCluster.superuserPassword)"
        )
        let uriTarget = try ConnectionString(
            target.url(database: targetDatabase) + "?sslmode=disable&connect_timeout=10&application_name=forms_test")
        _ = try await Migrator(config: MigrationConfig(source: socketSource, target: uriTarget)).run()
        let expected = try await Fingerprint.of(source, database: sourceDatabase)
        let actual = try await Fingerprint.of(target, database: targetDatabase)
        #expect(actual == expected, "\(actual.differences(from: expected))")
    }

    @Test("a cancel that reaches the server before its statement does is asked for again: the statement still ends at once")
    func cancelBeforeTheStatementArrives() async throws {
        let (source, _) = try await SharedClusters.get()
        let relay = try TCPRelay(to: source.port)
        defer { relay.stop() }
        let connection = try await Connection.connect(
            try ConnectionString("postgresql://\(TestCluster.superuser):\(TestCluster.superuserPassword)@127.0.0.1:\(relay.port)/postgres"))
        // The statement's second kilobyte reaches the server five seconds after its first; the cancel request, on a
        // connection of its own, at once: the server, still reading the statement, drops it.
        relay.bytesPerSecond = 200
        try await connection.execute("SELECT 1")  // the relay reads at the new pace from here
        let statement = "SELECT pg_sleep(60) -- " + String(repeating: "x", count: 1_500)
        let started = ContinuousClock.now
        let running = Task { try await connection.execute(statement) }
        try await Task.sleep(for: .milliseconds(300))
        running.cancel()
        let error = await #expect(throws: PostgresError.self) { try await running.value }
        #expect(error?.sqlState == "57014", "\(error.map { "\($0)" } ?? "no error")")
        #expect(ContinuousClock.now - started < .seconds(30), "the statement ran its 60 s")
    }

    /// Set in the child processes ``exitWhileHashing`` starts.
    static let exitProbeVariable = "PGDM_EXIT_PROBE"

    @Test(
        "a process that exits while its threads hash SCRAM passwords through libpq exits with its own status (OpenSSL's cleanup at exit crashed them)"
    )
    func exitWhileHashing() async throws {
        let testBinary = ProcessInfo.processInfo.arguments[0]
        var crashes: [String] = []
        for _ in 0..<8 {
            // A crash ends the child at once, without Swift's backtracer (which can hang over paused threads).
            let child = try await TestCluster.run(
                testBinary, ["--testing-library", "swift-testing", "--filter", "exitProbe"],
                environment: [Self.exitProbeVariable: "1", "SWIFT_BACKTRACE": "enable=no"])
            if child.status != 0 { crashes.append("exit status \(child.status): \(child.output.suffix(300))") }
        }
        #expect(crashes.isEmpty, "\(crashes.count) of 8 processes: \(crashes.first ?? "")")
    }

    @Test(
        "(run by exitWhileHashing in a process of its own) SCRAM secrets built on four threads while the process exits",
        .enabled(if: ProcessInfo.processInfo.environment[Self.exitProbeVariable] != nil, "runs only in exitWhileHashing's child process"))
    func exitProbe() async throws {
        // libpq is set up as this package sets it up (no server needed: nothing connects), then hashes through OpenSSL
        // (PBKDF2, HMAC, random salts) without pause; without the fix, 39 of 40 such processes crashed here.
        _ = try ConnectionString("host=/nonexistent port=1").resolvedUser
        for _ in 0..<4 {
            Thread.detachNewThread {
                let connection = PQconnectStart("host=/nonexistent port=1")
                while true { PQfreemem(PQencryptPasswordConn(connection, "secret", "user", "scram-sha-256")) }
            }
        }
        try await Task.sleep(for: .milliseconds(50 + Int.random(in: 0..<100)))
        exit(0)
    }
}
