import PostgresClient

/// A source relation as the stream last described it, and the statements that
/// apply its changes on the target: columns matched by name, values sent as
/// text parameters (the target parses each with its column's type), every
/// UPDATE and DELETE made to touch exactly one row or fail.
struct RelayRelation: Sendable {
    var name: QualifiedName
    var columns: [PgOutputMessage.Relation.Column]
    var replicaIdentityFull: Bool

    init(_ relation: PgOutputMessage.Relation) {
        name = QualifiedName(schema: relation.namespace.isEmpty ? "pg_catalog" : relation.namespace, name: relation.name)
        columns = relation.columns
        replicaIdentityFull = relation.replicaIdentity == UInt8(ascii: "f")
    }

    /// A statement and its parameters (text, nil for NULL).
    struct Statement: Equatable {
        var sql: String
        var parameters: [String?]
    }

    struct Unexpected: Error, CustomStringConvertible {
        var description: String
    }

    func insert(_ values: [PgOutputMessage.TupleValue]) throws -> Statement {
        let values = try checked(values, in: "an INSERT")
        guard !values.contains(.unchanged) else {
            throw Unexpected(description: "an INSERT into \(name) left a value out (unchanged TOAST)")
        }
        let names = columns.map { SQL.identifier($0.name) }.joined(separator: ", ")
        let placeholders = columns.indices.map { "$\($0 + 1)" }.joined(separator: ", ")
        // The source's value, also for an identity column GENERATED ALWAYS (ignored on other tables).
        return Statement(
            sql: "INSERT INTO \(name) (\(names)) OVERRIDING SYSTEM VALUE VALUES (\(placeholders))", parameters: try values.map(Self.text))
    }

    /// `old`: the old key or row when the stream sent one; else the key is read from `new`.
    /// Unchanged TOAST values are left out of the SET list: the target keeps its own.
    func update(old: PgOutputMessage.OldTuple?, new: [PgOutputMessage.TupleValue]) throws -> Statement {
        let new = try checked(new, in: "an UPDATE")
        var parameters: [String?] = []
        var assignments: [String] = []
        // Without an old key the key did not change: its columns are left out (an identity column GENERATED ALWAYS
        // may only be set to DEFAULT).
        for (column, value) in zip(columns, new) where value != .unchanged && !(old == nil && column.isKey) {
            parameters.append(try Self.text(value))
            assignments.append("\(SQL.identifier(column.name)) = $\(parameters.count)")
        }
        let target: (condition: String, parameters: [String?])
        switch old {
        case .full(let values)?: target = try locate(try checked(values, in: "an UPDATE's old row"), full: true, parameters: parameters)
        case .key(let values)?: target = try locate(try checked(values, in: "an UPDATE's old key"), full: false, parameters: parameters)
        case nil: target = try locate(new, full: false, parameters: parameters)
        }
        guard !assignments.isEmpty else {
            // Every value unchanged: nothing to set, but the row must be there.
            return Statement(sql: "SELECT 1 FROM ONLY \(name) WHERE \(target.condition) FOR UPDATE", parameters: target.parameters)
        }
        return Statement(
            sql: "UPDATE ONLY \(name) SET \(assignments.joined(separator: ", ")) WHERE \(target.condition) RETURNING 1",
            parameters: target.parameters)
    }

    func delete(old: PgOutputMessage.OldTuple) throws -> Statement {
        let full: Bool
        if case .full = old { full = true } else { full = false }
        let target = try locate(try checked(old.values, in: "a DELETE"), full: full, parameters: [])
        return Statement(sql: "DELETE FROM ONLY \(name) WHERE \(target.condition) RETURNING 1", parameters: target.parameters)
    }

    /// The condition that finds the one row a change is about, appending its parameters to `parameters`.
    /// By key: `key = $n` for each replica identity column. By whole row (FULL): NULL-safe equality on
    /// every column, and one row only (`ctid` of the first match), as PostgreSQL's own apply does.
    private func locate(_ values: [PgOutputMessage.TupleValue], full: Bool, parameters: [String?]) throws
        -> (condition: String, parameters: [String?])
    {
        var parameters = parameters
        var terms: [String] = []
        for (column, value) in zip(columns, values) where full || column.isKey {
            guard value != .unchanged else {
                throw Unexpected(description: "a change to \(name) identifies its row by a value it did not send (\(column.name))")
            }
            if full && value == .null {
                terms.append("\(SQL.identifier(column.name)) IS NULL")
                continue
            }
            parameters.append(try Self.text(value))
            terms.append("\(SQL.identifier(column.name)) \(full ? "IS NOT DISTINCT FROM" : "=") $\(parameters.count)")
        }
        guard !terms.isEmpty else { throw Unexpected(description: "a change to \(name) came without the columns that identify its row") }
        let condition = terms.joined(separator: " AND ")
        guard full else { return (condition, parameters) }
        return ("ctid = (SELECT ctid FROM ONLY \(name) WHERE \(condition) LIMIT 1 FOR UPDATE)", parameters)
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
