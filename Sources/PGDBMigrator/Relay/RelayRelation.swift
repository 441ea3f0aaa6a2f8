import PostgresClient

/// A source relation as the stream last described it, and the statements that
/// apply its changes on the target: columns matched by name, values sent as
/// parameters in the form the stream carried them (text, which the target
/// parses with its column's type, or that type's binary form), every UPDATE and
/// DELETE made to touch exactly one row or fail.
///
/// A change is turned into its ``Shape`` (which statement, and what each column
/// does in it) and its values; the statement's text is built from the shape
/// only the first time that shape is seen, since a busy stream repeats a few
/// shapes thousands of times a second.
struct RelayRelation: Sendable {
    var name: QualifiedName
    var columns: [PgOutputMessage.Relation.Column]
    var replicaIdentityFull: Bool
    /// The table and its columns, quoted once.
    private let table: String
    private let quoted: [String]
    /// Per column: an identity column GENERATED ALWAYS on the target, which an UPDATE may not set.
    private let alwaysGenerated: [Bool]
    /// Per column, its type on the target (nil where the target has no such column).
    private let types: [UInt32?]
    /// UPDATEs that keep their key may go many rows to a statement (``updateSQL(for:rows:)``): they are found
    /// by key and the target has no other unique index, so rows of different keys can change in any order.
    let batchesUpdates: Bool

    /// `target`: the table as the target has it.
    init(_ relation: PgOutputMessage.Relation, target: RelayTargetTable = .init()) {
        name = QualifiedName(schema: relation.namespace.isEmpty ? "pg_catalog" : relation.namespace, name: relation.name)
        columns = relation.columns
        replicaIdentityFull = relation.replicaIdentity == UInt8(ascii: "f")
        table = name.description
        quoted = relation.columns.map { SQL.identifier($0.name) }
        alwaysGenerated = relation.columns.map { target.generatedAlways.contains($0.name) }
        types = relation.columns.map { target.types[$0.name] }
        let key = relation.columns.filter(\.isKey).map(\.name)
        batchesUpdates = !replicaIdentityFull && !key.isEmpty && !types.contains(nil) && target.isOnlyUnique(key)
    }

    /// An UPDATE of this shape may wait in a batch of many rows: found by key, its key unchanged.
    func batches(_ shape: Shape) -> Bool {
        guard batchesUpdates, shape.kind == .update, !shape.byWholeRow else { return false }
        return !zip(columns, shape.roles).contains { $0.isKey && $1 & Role.assigned != 0 }
    }

    /// The types of ``updateSQL(for:rows:)``'s parameters.
    func updateParameterTypes(for shape: Shape, rows: Int) -> [UInt32] {
        let row = (shape.columns(Role.assigned) + shape.columns(Role.matched)).map { types[$0] ?? 0 }
        return Array(repeatElement(row, count: rows).joined())
    }

    /// How many of a change's parameters, at their end, find its row.
    func matchedCount(_ shape: Shape) -> Int { shape.columns(Role.matched).count }

    /// A change's statement apart from its values: the kind, and each column's part in it.
    struct Shape: Hashable {
        enum Kind: UInt8 {
            case insert, update, delete
            /// An UPDATE that changes no value: the row must be there all the same.
            case lockRow
            /// An UPDATE that sets an identity column GENERATED ALWAYS on the target (the source set it to
            /// DEFAULT, or has no such column): the row is deleted and inserted again with the source's values,
            /// those the change left out (unchanged TOAST) carried over.
            case replace
        }
        var kind: Kind
        /// The row is found by all its values (replica identity FULL), not by its key.
        var byWholeRow: Bool
        /// Per column, ``Role`` bits.
        var roles: [UInt8]

        /// The columns (their indexes) that play `role`.
        func columns(_ role: UInt8) -> [Int] { roles.indices.filter { roles[$0] & role != 0 } }
    }

    /// A column's part in a statement; its parameters come in column order, assigned values first.
    enum Role {
        /// Inserted or set: a parameter.
        static let assigned: UInt8 = 1
        /// Finds the row by its value: a parameter.
        static let matched: UInt8 = 2
        /// Finds the row (by whole row) by being NULL.
        static let matchedNull: UInt8 = 4
    }

    /// A change to apply: its statement's shape and its parameters (nil for NULL).
    struct Change {
        var shape: Shape
        var parameters: [Connection.Parameter?]
    }

    struct Unexpected: Error, CustomStringConvertible {
        var description: String
    }

    func insert(_ values: [PgOutputMessage.TupleValue]) throws -> Change {
        let values = try checked(values, in: "an INSERT")
        guard !values.contains(.unchanged) else {
            throw Unexpected(description: "an INSERT into \(name) left a value out (unchanged TOAST)")
        }
        return Change(
            shape: Shape(kind: .insert, byWholeRow: false, roles: Array(repeating: Role.assigned, count: columns.count)),
            parameters: try values.map(Self.parameter))
    }

    /// `old`: the old key or row when the stream sent one; else the key is read from `new`.
    /// Unchanged TOAST values are left out of the SET list: the target keeps its own.
    func update(old: PgOutputMessage.OldTuple?, new: [PgOutputMessage.TupleValue]) throws -> Change {
        let new = try checked(new, in: "an UPDATE")
        var roles = [UInt8](repeating: 0, count: columns.count)
        var parameters: [Connection.Parameter?] = []
        parameters.reserveCapacity(columns.count + 1)
        // Without an old key the key did not change: its columns are left out (an identity column GENERATED ALWAYS
        // may only be set to DEFAULT).
        for (index, (column, value)) in zip(columns, new).enumerated() where value != .unchanged && !(old == nil && column.isKey) {
            roles[index] = Role.assigned
            parameters.append(try Self.parameter(value))
        }
        let assigns = !parameters.isEmpty
        let byWholeRow: Bool
        switch old {
        case .full(let values)?:
            byWholeRow = true
            try locate(try checked(values, in: "an UPDATE's old row"), byWholeRow: true, roles: &roles, parameters: &parameters)
        case .key(let values)?:
            byWholeRow = false
            try locate(try checked(values, in: "an UPDATE's old key"), byWholeRow: false, roles: &roles, parameters: &parameters)
        case nil:
            byWholeRow = false
            try locate(new, byWholeRow: false, roles: &roles, parameters: &parameters)
        }
        let setsGenerated = roles.indices.contains { roles[$0] & Role.assigned != 0 && alwaysGenerated[$0] }
        let kind: Shape.Kind = setsGenerated ? .replace : assigns ? .update : .lockRow
        return Change(shape: Shape(kind: kind, byWholeRow: byWholeRow, roles: roles), parameters: parameters)
    }

    func delete(old: PgOutputMessage.OldTuple) throws -> Change {
        let byWholeRow: Bool
        if case .full = old { byWholeRow = true } else { byWholeRow = false }
        var roles = [UInt8](repeating: 0, count: columns.count)
        var parameters: [Connection.Parameter?] = []
        try locate(try checked(old.values, in: "a DELETE"), byWholeRow: byWholeRow, roles: &roles, parameters: &parameters)
        return Change(shape: Shape(kind: .delete, byWholeRow: byWholeRow, roles: roles), parameters: parameters)
    }

    /// The statement of a shape this relation's changes produce; for an INSERT, of `rows` rows at once (their
    /// parameters one row after the other).
    func sql(for shape: Shape, rows: Int = 1) -> String {
        let parts = statement(for: shape, rows: rows)
        return parts.replaced.map { "WITH replaced AS (\($0)) " + parts.main } ?? parts.main
    }

    /// At most this many rows go in one INSERT: fewer statements cost the target less, up to PostgreSQL's
    /// limit of 65,535 parameters.
    var rowsPerInsert: Int { min(64, 65_535 / max(columns.count, 1)) }

    /// The statement of a shape, made to touch exactly one row: none raises division by zero inside the
    /// server, which stops the apply (and the pipeline before its COMMIT).
    func oneRowSQL(for shape: Shape) -> String {
        let parts = statement(for: shape)
        let replaced = parts.replaced.map { "replaced AS (\($0)), " } ?? ""
        return "WITH \(replaced)changed AS (\(parts.main)) SELECT 1 / count(*)::int FROM changed"
    }

    /// The UPDATE of `rows` rows of a shape that ``batches(_:)``, their parameters one row after the other,
    /// made to touch exactly that many rows (none missing raises division by zero, as ``oneRowSQL(for:)``).
    /// Its parameters are prepared as their columns' types (``updateParameterTypes(for:rows:)``), without a
    /// length or precision: the SET checks those as any assignment does, where a cast would cut a value short.
    func updateSQL(for shape: Shape, rows: Int) -> String {
        let (assigned, matched) = (shape.columns(Role.assigned), shape.columns(Role.matched))
        let used = assigned + matched
        var number = 0
        let values = (0..<rows).map { _ in
            "("
                + used.map { _ in
                    number += 1
                    return "$\(number)"
                }.joined(separator: ", ") + ")"
        }
        let names = used.indices.map { "c\($0 + 1)" }
        let set = assigned.enumerated().map { "\(quoted[$1]) = relay_v.\(names[$0])" }.joined(separator: ", ")
        let condition = matched.enumerated().map { "relay_t.\(quoted[$1]) = relay_v.\(names[assigned.count + $0])" }
            .joined(separator: " AND ")
        return "WITH changed AS (UPDATE ONLY \(table) AS relay_t SET \(set) FROM (VALUES \(values.joined(separator: ", "))) "
            + "AS relay_v(\(names.joined(separator: ", "))) WHERE \(condition) RETURNING 1) "
            + "SELECT 1 / (count(*) = \(rows))::int FROM changed"
    }

    /// The statement, and for ``Shape/Kind/replace`` the DELETE whose rows (`replaced`) it inserts again.
    private func statement(for shape: Shape, rows: Int = 1) -> (replaced: String?, main: String) {
        var number = 0
        func next() -> String {
            number += 1
            return "$\(number)"
        }
        let assigned = shape.columns(Role.assigned)
        if shape.kind == .insert {
            // The source's value, also for an identity column GENERATED ALWAYS (ignored on other tables).
            let values = (0..<rows).map { _ in "(" + assigned.map { _ in next() }.joined(separator: ", ") + ")" }
            return (
                nil,
                "INSERT INTO \(table) (\(assigned.map { quoted[$0] }.joined(separator: ", "))) OVERRIDING SYSTEM VALUE VALUES "
                    + values.joined(separator: ", ")
            )
        }
        var values = quoted.map { "replaced." + $0 }
        for index in assigned { values[index] = next() }
        let assignments = assigned.map { "\(quoted[$0]) = \(values[$0])" }.joined(separator: ", ")
        var terms: [String] = []
        for (index, role) in shape.roles.enumerated() {
            if role & Role.matchedNull != 0 { terms.append("\(quoted[index]) IS NULL") }
            if role & Role.matched != 0 { terms.append("\(quoted[index]) \(shape.byWholeRow ? "IS NOT DISTINCT FROM" : "=") \(next())") }
        }
        var condition = terms.joined(separator: " AND ")
        // By whole row: one row only (`ctid` of the first match), as PostgreSQL's own apply does.
        if shape.byWholeRow { condition = "ctid = (SELECT ctid FROM ONLY \(table) WHERE \(condition) LIMIT 1 FOR UPDATE)" }
        switch shape.kind {
        case .insert, .update: return (nil, "UPDATE ONLY \(table) SET \(assignments) WHERE \(condition) RETURNING 1")
        case .lockRow: return (nil, "SELECT 1 FROM ONLY \(table) WHERE \(condition) FOR UPDATE")
        case .delete: return (nil, "DELETE FROM ONLY \(table) WHERE \(condition) RETURNING 1")
        case .replace:
            return (
                "DELETE FROM ONLY \(table) WHERE \(condition) RETURNING *",
                "INSERT INTO \(table) (\(quoted.joined(separator: ", "))) OVERRIDING SYSTEM VALUE SELECT \(values.joined(separator: ", ")) "
                    + "FROM replaced RETURNING 1"
            )
        }
    }

    /// Marks the columns that find the one row a change is about, appending their parameters. By key:
    /// each replica identity column. By whole row (FULL): every column, NULL-safely.
    private func locate(
        _ values: [PgOutputMessage.TupleValue], byWholeRow: Bool, roles: inout [UInt8], parameters: inout [Connection.Parameter?]
    ) throws {
        var found = false
        for (index, (column, value)) in zip(columns, values).enumerated() where byWholeRow || column.isKey {
            guard value != .unchanged else {
                throw Unexpected(description: "a change to \(name) identifies its row by a value it did not send (\(column.name))")
            }
            found = true
            if byWholeRow && value == .null {
                roles[index] |= Role.matchedNull
                continue
            }
            roles[index] |= Role.matched
            parameters.append(try Self.parameter(value))
        }
        guard found else { throw Unexpected(description: "a change to \(name) came without the columns that identify its row") }
    }

    private func checked(_ values: [PgOutputMessage.TupleValue], in what: String) throws -> [PgOutputMessage.TupleValue] {
        guard values.count == columns.count else {
            throw Unexpected(description: "\(what) on \(name) has \(values.count) values for \(columns.count) columns")
        }
        return values
    }

    private static func parameter(_ value: PgOutputMessage.TupleValue) throws -> Connection.Parameter? {
        switch value {
        case .null: return nil
        case .text(let bytes): return .text(String(decoding: bytes, as: UTF8.self))
        case .binary(let bytes): return .binary(bytes)
        case .unchanged: throw Unexpected(description: "an unchanged TOASTed value where a value must be sent")
        }
    }
}
