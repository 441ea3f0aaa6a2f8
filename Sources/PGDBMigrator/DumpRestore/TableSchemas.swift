import PostgresClient

/// `pg_dump --table` dumps the tables but not the schemas that hold them, so
/// restoring into an empty database would fail with "schema … does not
/// exist". Before the restore we create those schemas on the target.
struct TableSchemas {
    var filter: ObjectFilter

    /// The schemas on the source holding tables that `--table` patterns select.
    func schemas(on source: Connection) async throws -> [String] {
        var found: Set<String> = []
        for pattern in filter.tables {
            let (schema, name) = Self.regexes(for: pattern)
            let rows = try await source.query(
                """
                SELECT DISTINCT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND c.relname ~ $1 AND ($2::text IS NULL OR n.nspname ~ $2)
                """, [name, schema])
            found.formUnion(rows.rows.compactMap { $0[0] })
        }
        return found.sorted()
    }

    /// Creates each schema on the target unless it is there already.
    func create(_ schemas: [String], on target: Connection) async throws {
        for schema in schemas {
            try await target.execute("CREATE SCHEMA IF NOT EXISTS \(SQL.identifier(schema))")
        }
    }

    /// A psql/pg_dump name pattern as anchored regular expressions for the
    /// schema (nil when the pattern has none) and the name, with the same
    /// rules: double quotes keep case and make `*`, `?` and `.` literal;
    /// outside them letters fold to lower case, `*` is any text, `?` any
    /// character, and `.` separates schema from name.
    static func regexes(for pattern: String) -> (schema: String?, name: String) {
        var parts: [String] = []
        var current = ""
        var inQuotes = false
        var characters = Array(pattern)[...]
        while let character = characters.popFirst() {
            if character == "\"" {
                if inQuotes, characters.first == "\"" {
                    characters.removeFirst()
                    current += "\""
                } else {
                    inQuotes.toggle()
                }
            } else if !inQuotes && character == "." {
                parts.append(current)
                current = ""
            } else if !inQuotes && character == "*" {
                current += ".*"
            } else if !inQuotes && character == "?" {
                current += "."
            } else {
                let literal = inQuotes ? character : Character(character.lowercased())
                current += "|*+?()[]{}.^$\\".contains(literal) ? "\\\(literal)" : String(literal)
            }
        }
        parts.append(current)
        let anchored = parts.map { "^(\($0))$" }
        return anchored.count >= 2 ? (anchored[anchored.count - 2], anchored[anchored.count - 1]) : (nil, anchored[0])
    }
}
