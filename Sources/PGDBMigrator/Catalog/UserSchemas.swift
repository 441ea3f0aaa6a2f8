/// The schemas a migration is about: everything but PostgreSQL's own
/// (`pg_catalog`, `pg_toast`, `pg_temp_N`, … and `information_schema`).
enum UserSchemas {
    /// SQL that is true when the schema name in `column` is a user schema.
    static func predicate(_ column: String) -> String {
        "\(column) <> 'information_schema' AND \(column) NOT LIKE 'pg\\_%'"
    }
}
