import Testing

@testable import PGDBMigrator

/// Which changes of a parallel relay apply wait for which: by replica identity, and by every other unique
/// index of the target's table.
@Suite struct RelayConflictKeysTests {
    typealias Value = PgOutputMessage.TupleValue
    static func text(_ value: String) -> Value { .text(Array(value.utf8)) }

    /// `users (id PRIMARY KEY, email UNIQUE, name)` on the target, with `uniqueIndexes` as given.
    static func keys(replicaIdentity: Unicode.Scalar = "d", uniqueIndexes: [[String]?] = [["id"], ["email"]]) -> RelayConflictKeys {
        var keys = RelayConflictKeys()
        keys.describe(
            .init(
                oid: 7, namespace: "public", name: "users", replicaIdentity: UInt8(ascii: replicaIdentity),
                columns: [
                    .init(name: "id", typeOID: 23, typeModifier: -1, isKey: true),
                    .init(name: "email", typeOID: 25, typeModifier: -1, isKey: replicaIdentity == "f"),
                    .init(name: "name", typeOID: 25, typeModifier: -1, isKey: replicaIdentity == "f"),
                ]),
            target: RelayTargetTable(uniqueIndexes: uniqueIndexes))
        return keys
    }

    static func insert(_ id: String, _ email: String, _ name: String = "n") -> PgOutputMessage {
        .insert(xid: nil, relation: 7, new: [text(id), text(email), text(name)])
    }
    static func update(_ id: String, email: Value, from old: String? = nil) -> PgOutputMessage {
        .update(xid: nil, relation: 7, old: old.map { .key([text($0), .null, .null]) }, new: [text(id), email, text("n")])
    }
    static func delete(_ id: String) -> PgOutputMessage { .delete(xid: nil, relation: 7, old: .key([text(id), .null, .null])) }

    /// `later` waits for `earlier` (committed by another session before it).
    static func waits(_ later: PgOutputMessage, for earlier: PgOutputMessage, _ keys: RelayConflictKeys) -> Bool {
        !Set(keys.touched(by: later).checked).isDisjoint(with: keys.touched(by: earlier).owned)
    }

    @Test("a unique value freed in one transaction and taken by another row in the next: the taking waits; the rest runs at once")
    func uniqueValuesMoveBetweenRows() {
        let keys = Self.keys()
        #expect(keys.keying(of: 7) == .byKey(otherUnique: [[1]]))
        // Freed by a DELETE or an UPDATE whose old email the stream does not carry, then taken again.
        #expect(Self.waits(Self.insert("2", "a@x"), for: Self.delete("1"), keys))
        #expect(Self.waits(Self.update("2", email: Self.text("a@x")), for: Self.update("1", email: Self.text("b@x")), keys))
        #expect(Self.waits(Self.insert("3", "a@x"), for: Self.insert("2", "a@x"), keys))
        // The same row.
        #expect(Self.waits(Self.delete("1"), for: Self.insert("1", "c@x"), keys))
        #expect(Self.waits(Self.update("5", email: Self.text("z"), from: "1"), for: Self.insert("1", "c@x"), keys))
        #expect(Self.waits(Self.insert("1", "d@x"), for: Self.update("5", email: Self.text("z"), from: "1"), keys))
        // Inserts of other rows and values, and deletes of other rows, do not wait for each other.
        #expect(!Self.waits(Self.insert("2", "b@x"), for: Self.insert("1", "a@x"), keys))
        #expect(!Self.waits(Self.delete("2"), for: Self.delete("1"), keys))
        #expect(!Self.waits(Self.delete("2"), for: Self.insert("1", "a@x"), keys))
        // An UPDATE that left a TOASTed unique value as it was takes no value.
        let untouched = keys.touched(by: Self.update("1", email: .unchanged))
        #expect(untouched.holds.count == 1 && untouched.marks.count == 1, "its row, and the value it may have freed: \(untouched)")
    }

    @Test(
        "one key for the whole table where the unique values cannot be named: a partial or expression index, a column not sent"
    )
    func wholeTable() {
        #expect(Self.keys(uniqueIndexes: [["id"], nil]).keying(of: 7) == .wholeTable)
        #expect(Self.keys(uniqueIndexes: [["id"], ["email", "tenant"]]).keying(of: 7) == .wholeTable)
        let keys = Self.keys(uniqueIndexes: [["id"], nil])
        #expect(Self.waits(Self.insert("2", "b@x"), for: Self.insert("1", "a@x"), keys))
        // The identity the only unique index: rows, nothing more.
        let byRow = Self.keys(uniqueIndexes: [["id"]])
        #expect(byRow.keying(of: 7) == .byKey(otherUnique: []))
        #expect(!Self.waits(Self.insert("2", "a@x"), for: Self.delete("1"), byRow))
        #expect(Self.waits(Self.insert("1", "a@x"), for: Self.delete("1"), byRow))
    }

    static func full(_ values: [Value]) -> PgOutputMessage.OldTuple { .full(values) }
    static func row(_ id: String, _ email: String, _ name: String = "n") -> [Value] { [text(id), text(email), text(name)] }

    @Test(
        "identity FULL: a row is named by all its values, duplicates wait for each other, the unique values a change frees are named; a change missing an old value holds the table"
    )
    func identityFull() {
        // No unique index: rows by their values.
        let rows = Self.keys(replicaIdentity: "f", uniqueIndexes: [])
        #expect(rows.keying(of: 7) == .byKey(otherUnique: []))
        let x = Self.row("1", "a"), y = Self.row("2", "b"), z = Self.row("1", "c")
        #expect(!Self.waits(.insert(xid: nil, relation: 7, new: y), for: .insert(xid: nil, relation: 7, new: x), rows))
        #expect(Self.waits(.insert(xid: nil, relation: 7, new: x), for: .insert(xid: nil, relation: 7, new: x), rows))
        #expect(Self.waits(.delete(xid: nil, relation: 7, old: Self.full(x)), for: .insert(xid: nil, relation: 7, new: x), rows))
        #expect(!Self.waits(.delete(xid: nil, relation: 7, old: Self.full(y)), for: .insert(xid: nil, relation: 7, new: x), rows))
        let update: PgOutputMessage = .update(xid: nil, relation: 7, old: Self.full(x), new: z)
        #expect(Self.waits(update, for: .insert(xid: nil, relation: 7, new: x), rows))
        #expect(Self.waits(.delete(xid: nil, relation: 7, old: Self.full(z)), for: update, rows))
        // A TOASTed value left unchanged is the old row's.
        let kept: PgOutputMessage = .update(xid: nil, relation: 7, old: Self.full(x), new: [Self.text("1"), Self.text("c"), .unchanged])
        #expect(Self.waits(.delete(xid: nil, relation: 7, old: Self.full(z)), for: kept, rows))
        #expect(!Self.waits(.delete(xid: nil, relation: 7, old: Self.full(y)), for: kept, rows))
        // An old row missing a value names nothing: it waits for every earlier change, every later one for it.
        let blind: PgOutputMessage = .delete(xid: nil, relation: 7, old: Self.full([Self.text("1"), .unchanged, Self.text("n")]))
        #expect(Self.waits(blind, for: .insert(xid: nil, relation: 7, new: y), rows))
        #expect(Self.waits(.insert(xid: nil, relation: 7, new: y), for: blind, rows))
        #expect(!Self.waits(.insert(xid: nil, relation: 7, new: y), for: .insert(xid: nil, relation: 7, new: x), rows))

        // Unique indexes: the values a DELETE or an UPDATE frees are named, so only their takers wait.
        let users = Self.keys(replicaIdentity: "f")
        #expect(users.keying(of: 7) == .byKey(otherUnique: [[0], [1]]))
        let freed: PgOutputMessage = .delete(xid: nil, relation: 7, old: Self.full(Self.row("1", "a@x")))
        #expect(Self.waits(Self.insert("2", "a@x"), for: freed, users))
        #expect(Self.waits(Self.insert("1", "b@x"), for: freed, users))
        #expect(!Self.waits(Self.insert("3", "b@x"), for: freed, users))
        let moved: PgOutputMessage = .update(xid: nil, relation: 7, old: Self.full(Self.row("1", "a@x")), new: Self.row("1", "b@x"))
        #expect(Self.waits(Self.insert("2", "a@x"), for: moved, users))
        #expect(!Self.waits(Self.insert("3", "c@x"), for: moved, users))
    }
}
