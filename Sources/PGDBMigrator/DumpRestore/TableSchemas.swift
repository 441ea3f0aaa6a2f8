import PostgresClient

/// `pg_dump --table` dumps the tables but not the schemas that hold them, so
/// restoring into an empty database would fail with "schema … does not
/// exist". Before the restore we create those schemas on the target.
enum TableSchemas {
    /// Creates each schema on the target unless it is there already.
    static func create(_ schemas: [String], on target: Connection) async throws {
        for schema in schemas {
            try await target.execute("CREATE SCHEMA IF NOT EXISTS \(SQL.identifier(schema))")
        }
    }
}
