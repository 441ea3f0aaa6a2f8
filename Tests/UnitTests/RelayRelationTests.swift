import PostgresClient
import Testing

@testable import PGDBMigrator

/// Each change becomes a shape and its values; the statement text comes from the shape alone, so its
/// `$n` must line up with the values whatever the change left out.
@Suite struct RelayRelationTests {
    static func relation(full: Bool) -> RelayRelation {
        RelayRelation(
            .init(
                oid: 1, namespace: "app", name: "t\"x", replicaIdentity: UInt8(ascii: full ? "f" : "d"),
                columns: [
                    .init(name: "id", typeOID: 23, typeModifier: -1, isKey: true),
                    .init(name: "v", typeOID: 25, typeModifier: -1, isKey: full),
                    .init(name: "big", typeOID: 25, typeModifier: -1, isKey: full),
                ]))
    }

    static func text(_ value: String) -> PgOutputMessage.TupleValue { .text(Array(value.utf8)) }

    @Test("insert, update by key (unchanged TOAST left out, key kept out unless it changed), lock-only update, delete")
    func byKey() throws {
        let table = Self.relation(full: false)
        let insert = try table.insert([Self.text("1"), .null, Self.text("b")])
        #expect(
            table.sql(for: insert.shape)
                == "INSERT INTO \"app\".\"t\"\"x\" (\"id\", \"v\", \"big\") OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3)")
        #expect(insert.parameters == ["1", nil, "b"])
        #expect(
            table.sql(for: insert.shape, rows: 2)
                == "INSERT INTO \"app\".\"t\"\"x\" (\"id\", \"v\", \"big\") OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3), ($4, $5, $6)")

        let update = try table.update(old: nil, new: [Self.text("1"), Self.text("new"), .unchanged])
        #expect(table.sql(for: update.shape) == "UPDATE ONLY \"app\".\"t\"\"x\" SET \"v\" = $1 WHERE \"id\" = $2 RETURNING 1")
        #expect(update.parameters == ["new", "1"])

        let keyChange = try table.update(old: .key([Self.text("1"), .null, .null]), new: [Self.text("2"), Self.text("v"), .unchanged])
        #expect(
            table.sql(for: keyChange.shape) == "UPDATE ONLY \"app\".\"t\"\"x\" SET \"id\" = $1, \"v\" = $2 WHERE \"id\" = $3 RETURNING 1")
        #expect(keyChange.parameters == ["2", "v", "1"])

        let untouched = try table.update(old: nil, new: [Self.text("1"), .unchanged, .unchanged])
        #expect(table.sql(for: untouched.shape) == "SELECT 1 FROM ONLY \"app\".\"t\"\"x\" WHERE \"id\" = $1 FOR UPDATE")
        #expect(untouched.parameters == ["1"])

        let delete = try table.delete(old: .key([Self.text("3"), .null, .null]))
        #expect(table.sql(for: delete.shape) == "DELETE FROM ONLY \"app\".\"t\"\"x\" WHERE \"id\" = $1 RETURNING 1")
        #expect(delete.parameters == ["3"])
        // Values the stream carried in binary go to the target in binary, as they came.
        let binary = try table.update(old: nil, new: [.binary([0, 0, 0, 1]), .binary([0xff, 0]), .null])
        #expect(binary.parameters == [.binary([0xff, 0]), nil, .binary([0, 0, 0, 1])])
        // The same kind of change with other values has the same shape: one prepared statement serves both.
        #expect(try table.update(old: nil, new: [Self.text("9"), Self.text("w"), .unchanged]).shape == update.shape)
        #expect(try table.update(old: nil, new: [Self.text("9"), Self.text("w"), Self.text("b")]).shape != update.shape)
    }

    @Test(
        "UPDATEs that keep their key go many rows to a statement, typed as the target's columns, only where the key is the only unique index"
    )
    func batchedUpdates() throws {
        let base = Self.relation(full: false)
        func relation(_ unique: [[String]?]) -> RelayRelation {
            RelayRelation(
                .init(oid: 1, namespace: "app", name: "t\"x", replicaIdentity: UInt8(ascii: "d"), columns: base.columns),
                target: RelayTargetTable(types: ["id": 23, "v": 1043, "big": 25], uniqueIndexes: unique))
        }
        let table = relation([["id"]])
        let update = try table.update(old: nil, new: [Self.text("1"), Self.text("new"), .unchanged])
        #expect(table.batches(update.shape))
        #expect(
            table.updateSQL(for: update.shape, rows: 2)
                == "WITH changed AS (UPDATE ONLY \"app\".\"t\"\"x\" AS relay_t SET \"v\" = relay_v.c1 FROM (VALUES ($1, $2), ($3, $4)) "
                + "AS relay_v(c1, c2) WHERE relay_t.\"id\" = relay_v.c2 RETURNING 1) SELECT 1 / (count(*) = 2)::int FROM changed")
        #expect(table.updateParameterTypes(for: update.shape, rows: 2) == [1043, 23, 1043, 23])
        // A key change, a row found by all its values, another unique index, a column the target lacks: one at a time.
        #expect(
            !table.batches(
                try table.update(old: .key([Self.text("1"), .null, .null]), new: [Self.text("2"), Self.text("v"), .unchanged]).shape))
        #expect(!table.batches(try table.delete(old: .key([Self.text("3"), .null, .null])).shape))
        #expect(!Self.relation(full: true).batchesUpdates)
        #expect(!relation([["id"], ["v"]]).batchesUpdates)
        #expect(!relation([["id"], nil]).batchesUpdates)
        #expect(relation([]).batchesUpdates)
        #expect(
            !RelayRelation(.init(oid: 1, namespace: "app", name: "t", replicaIdentity: UInt8(ascii: "d"), columns: base.columns))
                .batchesUpdates)
    }

    @Test(
        "a key change to an identity column GENERATED ALWAYS on the target: deleted and inserted again, unchanged TOAST carried over"
    )
    func generatedAlwaysKey() throws {
        let base = Self.relation(full: false)
        let table = RelayRelation(
            .init(
                oid: 1, namespace: "app", name: "t\"x", replicaIdentity: UInt8(ascii: "d"),
                columns: base.columns), target: RelayTargetTable(generatedAlways: ["id"]))
        let keyChange = try table.update(old: .key([Self.text("1"), .null, .null]), new: [Self.text("2"), Self.text("v"), .unchanged])
        #expect(keyChange.shape.kind == .replace)
        #expect(
            table.sql(for: keyChange.shape)
                == "WITH replaced AS (DELETE FROM ONLY \"app\".\"t\"\"x\" WHERE \"id\" = $3 RETURNING *) INSERT INTO \"app\".\"t\"\"x\" "
                + "(\"id\", \"v\", \"big\") OVERRIDING SYSTEM VALUE SELECT $1, $2, replaced.\"big\" FROM replaced RETURNING 1")
        #expect(keyChange.parameters == ["2", "v", "1"])
        // Checked to touch one row: both parts stay at the top level (a data-modifying WITH may not be nested).
        let checked = table.oneRowSQL(for: keyChange.shape)
        #expect(checked.hasPrefix("WITH replaced AS (DELETE FROM ONLY"))
        #expect(
            checked.hasSuffix(
                "changed AS (INSERT INTO \"app\".\"t\"\"x\" (\"id\", \"v\", \"big\") OVERRIDING SYSTEM VALUE SELECT $1, $2, replaced.\"big\" FROM replaced RETURNING 1) SELECT 1 / count(*)::int FROM changed"
            ))
        // The key left alone: an ordinary UPDATE (the identity column is not set).
        #expect(try table.update(old: nil, new: [Self.text("1"), Self.text("w"), .unchanged]).shape.kind == .update)
        #expect(
            try base.update(old: .key([Self.text("1"), .null, .null]), new: [Self.text("2"), Self.text("v"), .unchanged]).shape.kind
                == .update)
    }

    @Test("identity FULL: every column matched NULL-safely, NULLs as IS NULL without a parameter, one row by ctid")
    func byWholeRow() throws {
        let table = Self.relation(full: true)
        let delete = try table.delete(old: .full([Self.text("1"), .null, Self.text("b")]))
        #expect(
            table.sql(for: delete.shape)
                == "DELETE FROM ONLY \"app\".\"t\"\"x\" WHERE ctid = (SELECT ctid FROM ONLY \"app\".\"t\"\"x\" WHERE \"id\" IS NOT DISTINCT FROM $1 "
                + "AND \"v\" IS NULL AND \"big\" IS NOT DISTINCT FROM $2 LIMIT 1 FOR UPDATE) RETURNING 1")
        #expect(delete.parameters == ["1", "b"])
        // A NULL elsewhere is another shape.
        #expect(try table.delete(old: .full([Self.text("1"), Self.text("a"), .null])).shape != delete.shape)

        let update = try table.update(
            old: .full([Self.text("1"), .null, Self.text("b")]), new: [Self.text("1"), Self.text("a"), Self.text("b")])
        #expect(
            table.sql(for: update.shape)
                == "UPDATE ONLY \"app\".\"t\"\"x\" SET \"id\" = $1, \"v\" = $2, \"big\" = $3 WHERE ctid = (SELECT ctid FROM ONLY \"app\".\"t\"\"x\" "
                + "WHERE \"id\" IS NOT DISTINCT FROM $4 AND \"v\" IS NULL AND \"big\" IS NOT DISTINCT FROM $5 LIMIT 1 FOR UPDATE) RETURNING 1"
        )
        #expect(update.parameters == ["1", "a", "b", "1", "b"])
    }

    @Test("a change that leaves out a value it is found by, or has the wrong number of values, is an error")
    func malformed() {
        let table = Self.relation(full: true)
        #expect(throws: RelayRelation.Unexpected.self) { try table.delete(old: .full([Self.text("1"), .unchanged, .null])) }
        #expect(throws: RelayRelation.Unexpected.self) { try table.insert([Self.text("1")]) }
        #expect(throws: RelayRelation.Unexpected.self) { try table.insert([Self.text("1"), .unchanged, .null]) }
    }
}

@Suite struct RelayConnectionTests {
    @Test("relay sessions keep the user's own options, with the text settings after them (a later -c wins)")
    func keepsOptions() throws {
        let given = try ConnectionString("postgresql://u@db.example:5432/app?options=-c%20search_path%3Dapp")
        let options = try #require(RelayApplier.withTextSettings(given)["options"])
        #expect(options == "-c search_path=app " + RelayApplier.textSettings)
        #expect(
            RelayApplier.withTextSettings(try ConnectionString("postgresql://u@db.example/app"))["options"] == RelayApplier.textSettings)
    }
}
