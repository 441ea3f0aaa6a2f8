import Foundation
import PGDBMigrator
import PostgresClient
import Testing

/// Offline migrations between two real servers, through the library.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct OfflineMigrationTests {
    /// Loads the fixture into a new source database and returns its name.
    static func sampleSource() async throws -> String {
        let (source, _) = try await SharedClusters.get()
        let name = try await source.createDatabase(SharedClusters.uniqueName("shop"))
        try await source.load(file: sampleSQLPath, into: name)
        return name
    }

    static func migrate(
        source sourceDatabase: String, target targetDatabase: String, events: EventLog = EventLog(),
        _ adjust: (inout MigrationConfig) -> Void = { _ in }
    ) async throws -> MigrationOutcome {
        let (source, target) = try await SharedClusters.get()
        var config = MigrationConfig(
            source: try source.connectionString(database: sourceDatabase),
            target: try target.connectionString(database: targetDatabase))
        adjust(&config)
        return try await Migrator(config: config, onEvent: events.record).run()
    }

    @Test(
        "full migration of the sample database, equal by content and schema",
        arguments: [(1, MigrationConfig.CopyMethod.native), (4, .native), (2, .dump)])
    func fullMigration(jobs: Int, copyMethod: MigrationConfig.CopyMethod) async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await Self.sampleSource()
        let targetDatabase = SharedClusters.uniqueName("shop_copy")
        let events = EventLog()

        let outcome = try await Self.migrate(source: sourceDatabase, target: targetDatabase, events: events) {
            $0.jobs = jobs
            $0.copyMethod = copyMethod
        }

        #expect(outcome.warnings.isEmpty)
        let expected = try await Fingerprint.of(source, database: sourceDatabase)
        let actual = try await Fingerprint.of(target, database: targetDatabase)
        #expect(expected.tables.count >= 10)
        #expect(expected.largeObjects["424242"] != nil)
        #expect(actual == expected, "\(actual.differences(from: expected))")
        let targetSchema = try await schemaDump(target, database: targetDatabase)
        let sourceSchema = try await schemaDump(source, database: sourceDatabase)
        #expect(targetSchema == sourceSchema)
        // Phases in order, each reported.
        let stages = events.stages.reduce(into: [Stage]()) { if $0.last != $1 { $0.append($1) } }
        #expect(stages == [.validate, .dump, .restore, .analyze, .verify, .complete])
        // The target was analyzed (statistics exist for the big tables).
        let analyzed = try await target.connect(database: targetDatabase)
        let statistics = try await analyzed.scalar("SELECT count(*) FROM pg_stats WHERE schemaname = 'sales'")
        #expect(Int(statistics ?? "0")! > 0)
    }

    @Test("the dump directory is private while it exists and removed after success")
    func dumpDirectoryIsPrivateAndRemoved() async throws {
        let sourceDatabase = try await Self.sampleSource()
        let parent = NSTemporaryDirectory() + "pgdm-dumppath-\(UUID().uuidString)"
        let dumpPath = parent + "/dump-here"
        defer { try? FileManager.default.removeItem(atPath: parent) }
        let events = EventLog()
        let watcher = PermissionWatcher(path: dumpPath)
        watcher.start()
        _ = try await Self.migrate(source: sourceDatabase, target: SharedClusters.uniqueName("copy"), events: events) {
            $0.dumpPath = dumpPath
        }
        let modes = watcher.stop()
        #expect(!modes.isEmpty, "the dump directory was never seen")
        #expect(modes.allSatisfy { $0 & 0o077 == 0 }, "dump directory modes seen: \(modes.map { String($0, radix: 8) })")
        #expect(!FileManager.default.fileExists(atPath: dumpPath))
    }

    @Test("a non-empty target is refused, and replaced with --drop-target-first")
    func nonEmptyTarget() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await Self.sampleSource()
        let targetDatabase = try await target.createDatabase(SharedClusters.uniqueName("busy"))
        let connection = try await target.connect(database: targetDatabase)
        try await connection.execute("CREATE TABLE leftover (id int); INSERT INTO leftover VALUES (1)")
        await connection.close()

        let error = await #expect(throws: MigrationError.self) {
            try await Self.migrate(source: sourceDatabase, target: targetDatabase)
        }
        #expect(error?.message.contains("not empty") == true)
        #expect(error?.message.contains("public.leftover") == true)
        #expect(error?.fix?.contains("\(MigrationConfig.Setting.dropTargetFirst)") == true)

        _ = try await Self.migrate(source: sourceDatabase, target: targetDatabase) { $0.dropTargetFirst = true }
        #expect(try await Fingerprint.of(target, database: targetDatabase) == Fingerprint.of(source, database: sourceDatabase))
    }

    @Test("roles a policy, default privileges or the database's grants name are checked up front; a policy's even with --no-acl")
    func missingPolicyAndDefaultPrivilegeRoles() async throws {
        let (source, _) = try await SharedClusters.get()
        let reader = SharedClusters.uniqueName("reader"), auditor = SharedClusters.uniqueName("auditor")
        let admin = try await source.connect()
        try await admin.execute("CREATE ROLE \(SQL.identifier(reader)); CREATE ROLE \(SQL.identifier(auditor))")
        let sourceDatabase = try await OnlinePreflightTests.smallSource(
            """
            ALTER TABLE items ENABLE ROW LEVEL SECURITY;
            CREATE POLICY readers ON items FOR SELECT TO \(SQL.identifier(reader)) USING (true);
            ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO \(SQL.identifier(auditor));
            """)
        let refused = await #expect(throws: MigrationError.self) {
            try await Self.migrate(source: sourceDatabase, target: SharedClusters.uniqueName("policy_copy"))
        }
        #expect(refused?.code == .preflight)
        #expect(
            refused?.message.contains("policies missing on the target: \(reader)") == true && refused?.message.contains(auditor) == true,
            "\(refused?.message ?? "")")
        // --no-acl leaves default privileges behind, not the policy's role.
        let stillRefused = await #expect(throws: MigrationError.self) {
            try await Self.migrate(source: sourceDatabase, target: SharedClusters.uniqueName("policy_copy")) { $0.noACL = true }
        }
        #expect(stillRefused?.message.contains(reader) == true && stillRefused?.message.contains(auditor) == false)
    }

    @Test("owners missing on the target are named up front; --no-owner --no-acl restores without them")
    func missingRoles() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await source.createDatabase(SharedClusters.uniqueName("owned"))
        let role = SharedClusters.uniqueName("app_owner")
        let admin = try await source.connect()
        try await admin.execute("CREATE ROLE \(SQL.identifier(role))")
        await admin.close()
        let connection = try await source.connect(database: sourceDatabase)
        try await connection.execute(
            """
            CREATE TABLE owned_table (id int PRIMARY KEY, note text);
            INSERT INTO owned_table SELECT g, 'row ' || g FROM generate_series(1, 50) g;
            ALTER TABLE owned_table OWNER TO \(SQL.identifier(role));
            GRANT SELECT ON owned_table TO PUBLIC;
            """)
        await connection.close()

        let targetDatabase = SharedClusters.uniqueName("owned_copy")
        let error = await #expect(throws: MigrationError.self) {
            try await Self.migrate(source: sourceDatabase, target: targetDatabase)
        }
        #expect(error?.message.contains(role) == true)
        #expect(error?.fix?.contains("\(MigrationConfig.Setting.noOwner)") == true)

        _ = try await Self.migrate(source: sourceDatabase, target: targetDatabase) {
            $0.noOwner = true
            $0.noACL = true
        }
        #expect(try await Fingerprint.of(target, database: targetDatabase) == Fingerprint.of(source, database: sourceDatabase))
        let check = try await target.connect(database: targetDatabase)
        #expect(try await check.scalar("SELECT tableowner FROM pg_tables WHERE tablename = 'owned_table'") == TestCluster.superuser)
    }

    @Test("pg_restore errors fail the run unless --allow-restore-errors, which lists them")
    func restoreErrors() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await source.createDatabase(SharedClusters.uniqueName("partial"))
        let connection = try await source.connect(database: sourceDatabase)
        try await connection.execute(
            """
            CREATE TABLE present (id int PRIMARY KEY); INSERT INTO present SELECT generate_series(1, 10);
            CREATE TABLE absent_on_target (id int PRIMARY KEY); INSERT INTO absent_on_target VALUES (1);
            """)
        await connection.close()
        // A target that has only one of the two tables: a data-only restore fails on the other.
        func freshTarget() async throws -> String {
            let name = try await target.createDatabase(SharedClusters.uniqueName("partial_copy"))
            let targetConnection = try await target.connect(database: name)
            try await targetConnection.execute("CREATE TABLE present (id int PRIMARY KEY)")
            await targetConnection.close()
            return name
        }

        let strictTarget = try await freshTarget()
        let error = await #expect(throws: MigrationError.self) {
            try await Self.migrate(source: sourceDatabase, target: strictTarget) { $0.dumpScope = .dataOnly }
        }
        #expect(error?.stage == .restore)
        #expect(error?.message.contains("absent_on_target") == true)
        #expect(error?.fix?.contains("\(MigrationConfig.Setting.allowRestoreErrors)") == true)

        let lenientTarget = try await freshTarget()
        let events = EventLog()
        let outcome = try await Self.migrate(source: sourceDatabase, target: lenientTarget, events: events) {
            $0.dumpScope = .dataOnly
            $0.allowRestoreErrors = true
            $0.verify.mode = .warn
        }
        #expect(outcome.warnings.contains { $0.contains("absent_on_target") })
        #expect(outcome.warnings.contains { $0.contains("public.absent_on_target is missing on the target") })
        #expect(events.all.contains { $0.level == .warning && $0.stage == .restore })
        let check = try await target.connect(database: lenientTarget)
        #expect(try await check.scalar("SELECT count(*) FROM present") == "10")
    }

    @Test("--dump-scope schema-only copies definitions without rows")
    func schemaOnly() async throws {
        let (source, target) = try await SharedClusters.get()
        let sourceDatabase = try await Self.sampleSource()
        let targetDatabase = SharedClusters.uniqueName("schema_only")
        _ = try await Self.migrate(source: sourceDatabase, target: targetDatabase) { $0.dumpScope = .schemaOnly }
        let copy = try await Fingerprint.of(target, database: targetDatabase)
        let original = try await Fingerprint.of(source, database: sourceDatabase)
        #expect(Set(copy.tables.keys) == Set(original.tables.keys))
        #expect(copy.tables["sales.orders"] == "0:-")
        let targetSchema = try await schemaDump(target, database: targetDatabase)
        let sourceSchema = try await schemaDump(source, database: sourceDatabase)
        #expect(targetSchema == sourceSchema)
    }
}

/// Collects events from a run, for assertions.
final class EventLog: @unchecked Sendable {
    private let lock = NSLock()
    private var events: [MigrationEvent] = []

    var record: EventHandler {
        { [self] event in
            lock.lock()
            events.append(event)
            lock.unlock()
        }
    }

    var all: [MigrationEvent] {
        lock.lock()
        defer { lock.unlock() }
        return events
    }

    var stages: [Stage] { all.map(\.stage) }
}

/// A flag one task sets and another reads.
final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}

/// Samples a path's permission bits in the background while it exists.
final class PermissionWatcher: @unchecked Sendable {
    private let path: String
    private let lock = NSLock()
    private var modes: Set<UInt16> = []
    private var running = true

    init(path: String) { self.path = path }

    func start() {
        Thread { [self] in
            while true {
                lock.lock()
                let keepGoing = running
                lock.unlock()
                if !keepGoing { return }
                var info = stat()
                if stat(path, &info) == 0 {
                    lock.lock()
                    modes.insert(UInt16(info.st_mode & 0o777))
                    lock.unlock()
                }
                usleep(1_000)
            }
        }.start()
    }

    func stop() -> Set<UInt16> {
        lock.lock()
        defer { lock.unlock() }
        running = false
        return modes
    }
}
