import PostgresClient

/// A relation's schema and name, unquoted, as the catalog spells them.
struct QualifiedName: Sendable, Hashable, Codable, CustomStringConvertible {
    var schema: String
    var name: String

    /// `"schema"."name"`, for SQL.
    var description: String { SQL.qualified(schema, name) }

    /// `schema.name` as messages show it (quotes only where a name needs them, roughly as `quote_ident`).
    var shown: String {
        func part(_ text: String) -> String {
            let plain =
                text.first.map { $0 == "_" || ($0.isLetter && $0.isLowercase) } == true
                && text.allSatisfy { $0 == "_" || $0.isNumber || ($0.isLetter && $0.isLowercase) } && text.allSatisfy(\.isASCII)
            return plain ? text : SQL.identifier(text)
        }
        return part(schema) + "." + part(name)
    }

    /// A `pg_dump` pattern matching exactly this relation: inside double
    /// quotes no character is a wildcard, and `"` is written twice.
    var exactPattern: String { description }
}
