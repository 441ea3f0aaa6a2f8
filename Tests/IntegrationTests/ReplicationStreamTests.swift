import Foundation
import PostgresClient
import Testing

@testable import PGDBMigrator

/// The building blocks of relay apply against a real server: a replication connection's
/// CopyBoth stream, standby status updates, and pgoutput decoded message by message.
@Suite(.timeLimit(.minutes(3)))
struct ReplicationStreamTests {
    /// Opens a `replication=database` connection and starts streaming `slot` with pgoutput.
    static func stream(_ cluster: TestCluster, database: String, slot: String, publication: String, options: String = "")
        async throws -> Connection
    {
        let replication = try await Connection.connect(
            try cluster.connectionString(database: database).setting("replication", to: "database")
                .setting("client_encoding", to: "UTF8"), label: "relay")
        try await replication.startReplication(
            "START_REPLICATION SLOT \(SQL.identifier(slot)) LOGICAL 0/0 (proto_version '2', publication_names "
                + SQL.literal(SQL.identifier(publication)) + ", messages 'true'\(options))")
        return replication
    }

    /// Decodes the stream until `last` says a message is the last wanted; answers keepalives that ask.
    static func messages(from replication: Connection, until last: (PgOutputMessage) -> Bool) async throws -> [PgOutputMessage] {
        var decoder = PgOutputDecoder()
        var decoded: [PgOutputMessage] = []
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            for message in try await replication.readReplicationMessages(timeout: .milliseconds(500)) {
                switch message {
                case .data(_, _, let data):
                    let next = try decoder.decode(data)
                    decoded.append(next)
                    if last(next) { return decoded }
                case .keepalive(let end, let replyRequested):
                    if replyRequested { try await replication.sendStandbyStatus(write: end, flush: LSN(0), apply: LSN(0)) }
                }
            }
        }
        Issue.record("the last message wanted did not come within 60 s; decoded: \(decoded)")
        return decoded
    }

    static func text(_ value: String) -> PgOutputMessage.TupleValue { .text(Array(value.utf8)) }

    @Test("every change kind decodes: insert, unchanged TOAST, key change (K), identity FULL (O), truncate, message; flush moves the slot")
    func decodesChanges() async throws {
        let (cluster, _) = try await SharedClusters.get()
        let database = try await cluster.createDatabase(SharedClusters.uniqueName("relay_decode"))
        let session = try await cluster.connect(database: database)
        let slot = SharedClusters.uniqueName("relay_slot")
        try await session.execute(
            """
            CREATE TABLE t (id int PRIMARY KEY, v text, big text);
            ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
            CREATE TABLE f (a int, b text); ALTER TABLE f REPLICA IDENTITY FULL;
            INSERT INTO f VALUES (1, NULL), (1, NULL);
            CREATE PUBLICATION relay_pub FOR ALL TABLES
            """)
        try await session.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [slot])
        let big = String(repeating: "0123456789", count: 1000)
        // Five transactions (one simple query is one transaction).
        for statement in [
            "INSERT INTO t VALUES (1, 'one', '\(big)')", "UPDATE t SET v = 'uno'", "UPDATE t SET id = 2",
            "DELETE FROM f WHERE ctid = (SELECT min(ctid) FROM f)",
            "BEGIN; TRUNCATE t RESTART IDENTITY; SELECT pg_logical_emit_message(true, 'pgdm-test', 'end'); COMMIT",
        ] {
            try await session.execute(statement)
        }
        let replication = try await Self.stream(cluster, database: database, slot: slot, publication: "relay_pub")
        var commitsSeen = 0
        let messages = try await Self.messages(from: replication) {
            if case .commit = $0 { commitsSeen += 1 }
            return commitsSeen == 5
        }

        let relations = messages.compactMap { if case .relation(let relation) = $0 { relation } else { nil } }
        let t = try #require(relations.first { $0.name == "t" })
        #expect(t.namespace == "public" && t.replicaIdentity == UInt8(ascii: "d"))
        #expect(t.columns.map(\.name) == ["id", "v", "big"] && t.columns.map(\.isKey) == [true, false, false])
        #expect(t.columns.map(\.typeOID) == [23, 25, 25])
        let f = try #require(relations.first { $0.name == "f" })
        #expect(f.replicaIdentity == UInt8(ascii: "f") && f.columns.allSatisfy(\.isKey))

        let changes = messages.filter {
            switch $0 {
            case .insert, .update, .delete, .truncate, .message: true
            default: false
            }
        }
        #expect(
            changes == [
                .insert(xid: nil, relation: t.oid, new: [Self.text("1"), Self.text("one"), Self.text(big)]),
                .update(xid: nil, relation: t.oid, old: nil, new: [Self.text("1"), Self.text("uno"), .unchanged]),
                .update(
                    xid: nil, relation: t.oid, old: .key([Self.text("1"), .null, .null]),
                    new: [Self.text("2"), Self.text("uno"), .unchanged]),
                .delete(xid: nil, relation: f.oid, old: .full([Self.text("1"), .null])),
                .truncate(xid: nil, cascade: false, restartIdentity: true, relations: [t.oid]),
                changes.last!,
            ], "\(changes)")
        guard case .message(nil, true, let lsn, "pgdm-test", let content)? = changes.last else {
            Issue.record("no transactional message last: \(changes)")
            return
        }
        #expect(content == Array("end".utf8) && lsn.value > 0)
        // Five transactions, each Begin … Commit, in order.
        let commits = messages.compactMap { if case .commit(_, let end, _) = $0 { end } else { nil } }
        #expect(messages.filter { if case .begin = $0 { true } else { false } }.count == 5 && commits.count == 5)
        #expect(commits == commits.sorted())

        // A flush position moves the slot's confirmed_flush_lsn; nothing else does.
        let flushed = try #require(commits.dropLast().last)
        try await replication.sendStandbyStatus(write: commits.last!, flush: flushed, apply: flushed)
        var confirmed: String?
        for _ in 0..<50 {
            confirmed = try await session.scalar("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", [slot])
            if confirmed == flushed.description { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(confirmed == flushed.description)
        await replication.close()
        try await RelayApplyTests.dropSlot(slot, on: session)
    }

    @Test("a streamed transaction: its blocks carry xids, a rolled-back savepoint is a subtransaction abort, then the commit")
    func decodesStreamedTransactions() async throws {
        let cluster = try await TestCluster.start(name: "relay-stream", settings: ["logical_decoding_work_mem": "64kB"])
        defer { cluster.stop() }
        let database = try await cluster.createDatabase("app")
        let session = try await cluster.connect(database: database)
        try await session.execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR ALL TABLES")
        try await session.query("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        try await session.execute(
            """
            BEGIN;
            INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 3000) g;
            SAVEPOINT undone;
            INSERT INTO t SELECT g, repeat('y', 100) FROM generate_series(3001, 6000) g;
            ROLLBACK TO SAVEPOINT undone;
            INSERT INTO t VALUES (0, 'kept');
            SELECT pg_logical_emit_message(true, 'pgdm-test', 'end');
            COMMIT
            """)
        let replication = try await Self.stream(cluster, database: database, slot: "s", publication: "p", options: ", streaming 'on'")
        let messages = try await Self.messages(from: replication) { if case .streamCommit = $0 { true } else { false } }
        let starts = messages.compactMap { if case .streamStart(let xid, let first) = $0 { (xid, first) } else { nil } }
        #expect(starts.count >= 2 && starts.first?.1 == true && starts.dropFirst().allSatisfy { !$0.1 })
        let top = try #require(starts.first?.0)
        let inserts: [UInt32?] = messages.filter { if case .insert = $0 { true } else { false } }
            .map { if case .insert(let xid, _, _) = $0 { xid } else { nil } }
        #expect(inserts.allSatisfy { $0 != nil }, "inside stream blocks every change carries an xid")
        // The savepoint's inserts carry its subtransaction's xid; after ROLLBACK TO, the savepoint is a new one.
        let subtransactions = Set(inserts.compactMap { $0 }).subtracting([top])
        #expect(subtransactions.count == 2, "\(subtransactions)")
        let aborts = messages.compactMap { if case .streamAbort(let xid, let subxid) = $0 { (xid, subxid) } else { nil } }
        #expect(aborts.count == 1 && aborts.first?.0 == top && subtransactions.contains(aborts.first!.1), "\(aborts)")
        #expect(messages.contains { if case .streamCommit(top, _, _, _) = $0 { true } else { false } })
        await replication.close()
    }
}
