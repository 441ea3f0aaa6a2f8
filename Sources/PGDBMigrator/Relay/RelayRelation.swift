import PostgresClient

/// A source relation as the stream last described it, and the statements that
/// apply its changes on the target: columns matched by name, values sent as
/// text parameters (the target parses each with its column's type), every
/// UPDATE and DELETE made to touch exactly one row or fail.
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

    init(_ relation: PgOutputMessage.Relation) {
        name = QualifiedName(schema: relation.namespace.isEmpty ? "pg_catalog" : relation.namespace, name: relation.name)
        columns = relation.columns
        replicaIdentityFull = relation.replicaIdentity == UInt8(ascii: "f")
        table = name.description
        quoted = relation.columns.map { SQL.identifier($0.name) }
    }

    /// A change's statement apart from its values: the kind, and each column's part in it.
    struct Shape: Hashable {
        enum Kind: UInt8 {
            case insert, update, delete
            /// An UPDATE that changes no value: the row must be there all the same.
            case lockRow
        }
        var kind: Kind
        /// The row is found by all its values (replica identity FULL), not by its key.
        var byWholeRow: Bool
        /// Per column, ``Role`` bits.
        var roles: [UInt8]
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

    /// A change to apply: its statement's shape and its parameters (text, nil for NULL).
    struct Change {
        var shape: Shape
        var parameters: [String?]
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
            parameters: try values.map(Self.text))
    }

    /// `old`: the old key or row when the stream sent one; else the key is read from `new`.
    /// Unchanged TOAST values are left out of the SET list: the target keeps its own.
    func update(old: PgOutputMessage.OldTuple?, new: [PgOutputMessage.TupleValue]) throws -> Change {
        let new = try checked(new, in: "an UPDATE")
        var roles = [UInt8](repeating: 0, count: columns.count)
        var parameters: [String?] = []
        parameters.reserveCapacity(columns.count + 1)
        // Without an old key the key did not change: its columns are left out (an identity column GENERATED ALWAYS
        // may only be set to DEFAULT).
        for (index, (column, value)) in zip(columns, new).enumerated() where value != .unchanged && !(old == nil && column.isKey) {
            roles[index] = Role.assigned
            parameters.append(try Self.text(value))
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
        return Change(shape: Shape(kind: assigns ? .update : .lockRow, byWholeRow: byWholeRow, roles: roles), parameters: parameters)
    }

    func delete(old: PgOutputMessage.OldTuple) throws -> Change {
        let byWholeRow: Bool
        if case .full = old { byWholeRow = true } else { byWholeRow = false }
        var roles = [UInt8](repeating: 0, count: columns.count)
        var parameters: [String?] = []
        try locate(try checked(old.values, in: "a DELETE"), byWholeRow: byWholeRow, roles: &roles, parameters: &parameters)
        return Change(shape: Shape(kind: .delete, byWholeRow: byWholeRow, roles: roles), parameters: parameters)
    }

    /// The statement of a shape this relation's changes produce.
    func sql(for shape: Shape) -> String {
        var number = 0
        func next() -> String {
            number += 1
            return "$\(number)"
        }
        let assigned = shape.roles.indices.filter { shape.roles[$0] & Role.assigned != 0 }
        if shape.kind == .insert {
            // The source's value, also for an identity column GENERATED ALWAYS (ignored on other tables).
            return "INSERT INTO \(table) (\(assigned.map { quoted[$0] }.joined(separator: ", "))) OVERRIDING SYSTEM VALUE VALUES ("
                + assigned.map { _ in next() }.joined(separator: ", ") + ")"
        }
        let assignments = assigned.map { "\(quoted[$0]) = \(next())" }.joined(separator: ", ")
        var terms: [String] = []
        for (index, role) in shape.roles.enumerated() {
            if role & Role.matchedNull != 0 { terms.append("\(quoted[index]) IS NULL") }
            if role & Role.matched != 0 { terms.append("\(quoted[index]) \(shape.byWholeRow ? "IS NOT DISTINCT FROM" : "=") \(next())") }
        }
        var condition = terms.joined(separator: " AND ")
        // By whole row: one row only (`ctid` of the first match), as PostgreSQL's own apply does.
        if shape.byWholeRow { condition = "ctid = (SELECT ctid FROM ONLY \(table) WHERE \(condition) LIMIT 1 FOR UPDATE)" }
        switch shape.kind {
        case .insert, .update: return "UPDATE ONLY \(table) SET \(assignments) WHERE \(condition) RETURNING 1"
        case .lockRow: return "SELECT 1 FROM ONLY \(table) WHERE \(condition) FOR UPDATE"
        case .delete: return "DELETE FROM ONLY \(table) WHERE \(condition) RETURNING 1"
        }
    }

    /// Marks the columns that find the one row a change is about, appending their parameters. By key:
    /// each replica identity column. By whole row (FULL): every column, NULL-safely.
    private func locate(
        _ values: [PgOutputMessage.TupleValue], byWholeRow: Bool, roles: inout [UInt8], parameters: inout [String?]
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
            parameters.append(try Self.text(value))
        }
        guard found else { throw Unexpected(description: "a change to \(name) came without the columns that identify its row") }
    }

    private func checked(_ values: [PgOutputMessage.TupleValue], in what: String) throws -> [PgOutputMessage.TupleValue] {
        guard values.count == columns.count else {
            throw Unexpected(description: "\(what) on \(name) has \(values.count) values for \(columns.count) columns")
        }
        return values
    }

    private static func text(_ value: PgOutputMessage.TupleValue) throws -> String? {
        switch value {
        case .null: return nil
        case .text(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .binary, .unchanged: throw Unexpected(description: "a value in a form relay apply does not send as text")
        }
    }
}
