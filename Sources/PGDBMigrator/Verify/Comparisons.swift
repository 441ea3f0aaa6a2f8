import PostgresClient

/// Columns and types, indexes and constraints, table by table.
enum SchemaComparison {
    static let describeSQL = """
        WITH wanted AS (SELECT unnest($1::text[]) AS name),
        rel AS (SELECT w.name, to_regclass(w.name) AS oid FROM wanted w)
        SELECT rel.name, 'column', quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
                  || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
                  || CASE a.attgenerated WHEN 's' THEN ' GENERATED' ELSE '' END
                  || CASE WHEN a.attidentity <> '' THEN ' IDENTITY' ELSE '' END
        FROM rel JOIN pg_attribute a ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT rel.name, 'index', pg_get_indexdef(i.indexrelid)
        FROM rel JOIN pg_index i ON i.indrelid = rel.oid
        UNION ALL
        SELECT rel.name, 'constraint', quote_ident(c.conname) || ' ' || pg_get_constraintdef(c.oid)
        FROM rel JOIN pg_constraint c ON c.conrelid = rel.oid
        """

    /// What differs, by table (``QualifiedName/shown``).
    static func differences(of tables: [QualifiedName], source: Connection, target: Connection) async throws -> [String: [String]] {
        guard !tables.isEmpty else { return [:] }
        let list = SQL.textArray(tables.map(\.description))
        async let sourceRows = source.query(describeSQL, [list])
        async let targetRows = target.query(describeSQL, [list])
        func group(_ rows: [[String?]]) -> [String: Set<String>] {
            var byTable: [String: Set<String>] = [:]
            for row in rows { byTable[row[0]!, default: []].insert("\(row[1]!) \(row[2]!)") }
            return byTable
        }
        let (sourceSchema, targetSchema) = try await (group(sourceRows.rows), group(targetRows.rows))
        var differences: [String: [String]] = [:]
        for table in tables {
            let mine = sourceSchema[table.description] ?? []
            let theirs = targetSchema[table.description] ?? []
            let lines =
                mine.subtracting(theirs).sorted().map { "missing on the target: \($0)" }
                + theirs.subtracting(mine).sorted().map { "only on the target: \($0)" }
            if !lines.isEmpty { differences[table.shown] = lines }
        }
        return differences
    }
}

/// Sequences whose target value is behind the source's (or missing).
enum SequenceComparison {
    static func behind(_ wanted: [QualifiedName], source: Connection, target: Connection) async throws -> [VerifyReport.SequenceResult] {
        var behind: [VerifyReport.SequenceResult] = []
        for sequence in wanted.sorted(by: { $0.shown < $1.shown }) {
            let name = sequence.shown
            let sql = "SELECT last_value::text, is_called::text FROM \(sequence)"
            let sourceState = try await source.query(sql).rows[0]
            guard let targetState = try? await target.query(sql).rows[0] else {
                behind.append(.init(sequence: name, source: describe(sourceState), target: "missing"))
                continue
            }
            let sourceValue = Int64(sourceState[0] ?? "0") ?? 0, targetValue = Int64(targetState[0] ?? "0") ?? 0
            let isBehind = targetValue < sourceValue || (targetValue == sourceValue && sourceState[1] == "true" && targetState[1] != "true")
            if isBehind { behind.append(.init(sequence: name, source: describe(sourceState), target: describe(targetState))) }
        }
        return behind
    }

    private static func describe(_ state: [String?]) -> String {
        "\(state[0] ?? "?")\(state[1] == "true" ? "" : " (not yet called)")"
    }
}

/// Lists the rows of one part that differ, by key, for `--verify-show-rows`.
enum RowDifferences {
    static func list(_ part: Verifier.Part, limit: Int, source: Connection, target: Connection) async throws -> [String] {
        let key = part.table.keyColumns.isEmpty ? "t::text" : "ROW(\(part.table.keyColumns.joined(separator: ", ")))::text"
        let sql = "SELECT \(key), md5(t::text), count(*) FROM ONLY \(part.table.name) t WHERE \(part.condition) GROUP BY 1, 2"
        async let sourceRows = source.query(sql)
        async let targetRows = target.query(sql)
        func index(_ rows: [[String?]]) -> [String: [String: Int]] {
            var byKey: [String: [String: Int]] = [:]
            for row in rows { byKey[row[0] ?? "NULL", default: [:]][row[1] ?? "", default: 0] += Int(row[2] ?? "1") ?? 1 }
            return byKey
        }
        let (mine, theirs) = try await (index(sourceRows.rows), index(targetRows.rows))
        var lines: [String] = []
        let what = part.table.keyColumns.isEmpty ? "row" : "key"
        for key in Set(mine.keys).union(theirs.keys).sorted() where lines.count < limit {
            switch (mine[key], theirs[key]) {
            case (.some, nil): lines.append("\(what) \(key): missing on the target")
            case (nil, .some): lines.append("\(what) \(key): only on the target")
            case let (a?, b?) where a != b:
                lines.append(
                    part.table.keyColumns.isEmpty
                        ? "row \(key): \(a.values.reduce(0, +)) on the source, \(b.values.reduce(0, +)) on the target"
                        : "key \(key): content differs")
            default: break
            }
        }
        return lines
    }
}
