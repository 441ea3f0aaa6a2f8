import Foundation
import PostgresClient

/// The publication on the source that says which tables the slot streams.
struct Publication {
    var name: String
    var filter: ObjectFilter
    /// The run that creates it (its mark), or that looks for what it created.
    var runID: String?

    func exists(on source: Connection) async throws -> Bool {
        try await source.scalar("SELECT 1 FROM pg_publication WHERE pubname = $1", [name]) != nil
    }

    /// The tables a publication we create would hold: every user table
    /// matching the filters, as `quote_ident(schema).quote_ident(table)`.
    func tablesToPublish(on source: Connection) async throws -> [String] {
        let rows = try await source.query(
            """
            SELECT n.nspname, c.relname, quote_ident(n.nspname) || '.' || quote_ident(c.relname)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
              AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
            ORDER BY 1, 2
            """
        ).rows.map { (schema: $0[0]!, table: $0[1]!, quoted: $0[2]!) }
        // quote_ident's form, the same as pg_publication_tables and the replica identity check produce.
        return rows.filter { filter.includes(schema: $0.schema, table: $0.table) }.map(\.quoted)
    }

    /// The tables an existing publication holds (leaf partitions included).
    func publishedTables(on source: Connection) async throws -> [String] {
        try await source.query(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
            [name]
        ).rows.compactMap { $0[0] }
    }

    /// Creates the publication: FOR ALL TABLES without filters, else FOR TABLE with the selected tables.
    func create(on source: Connection) async throws {
        let tables = filter.isEmpty ? [] : try await tablesToPublish(on: source)
        if !filter.isEmpty && tables.isEmpty {
            throw MigrationError(
                .prepareSnapshot, "the filters select no table to publish",
                fix: "check --schema/--table/--exclude-schema/--exclude-table")
        }
        let what = filter.isEmpty ? "FOR ALL TABLES" : "FOR TABLE " + tables.joined(separator: ", ")
        guard let runID else { preconditionFailure("a publication is created by a run") }
        do {
            // One statement string, one transaction: the publication never exists without the mark
            // that tells cleanup and cutover it is this run's.
            try await source.execute(
                "CREATE PUBLICATION \(SQL.identifier(name)) \(what); "
                    + "COMMENT ON PUBLICATION \(SQL.identifier(name)) IS \(SQL.literal(OwnershipMark.text(runID: runID)))")
        } catch let error as PostgresError {
            throw MigrationError(
                .prepareSnapshot, "cannot create the publication \(SQL.identifier(name)) on the source: \(error)",
                fix: filter.isEmpty
                    ? "FOR ALL TABLES needs a superuser; create the publication yourself and pass --publication"
                    : "the source role must own the published tables; or create the publication yourself and pass --publication")
        }
    }

    /// Who created the publication, by its mark; nil when there is none of that name.
    func owner(on source: Connection) async throws -> OwnershipMark.Owner? {
        guard let row = try await source.query(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = $1", [name]
        ).rows.first else { return nil }
        return OwnershipMark.owner(ofObjectCommented: row[0], runID: runID)
    }

    func drop(on source: Connection) async throws {
        try await source.execute("DROP PUBLICATION IF EXISTS \(SQL.identifier(name))")
    }
}

extension ObjectFilter {
    /// Whether `schema.table` is in the migrated set, by the same pattern rules as `pg_dump`.
    func includes(schema: String, table: String) -> Bool {
        func matches(_ pattern: String) -> Bool {
            let (schemaRegex, nameRegex) = TableSchemas.regexes(for: pattern)
            return table.wholeMatch(regex: nameRegex) && (schemaRegex.map { schema.wholeMatch(regex: $0) } ?? true)
        }
        func schemaMatches(_ pattern: String) -> Bool {
            schema.wholeMatch(regex: TableSchemas.regexes(for: pattern).name)
        }
        if !schemas.isEmpty && !schemas.contains(where: schemaMatches) { return false }
        if excludeSchemas.contains(where: schemaMatches) { return false }
        if !tables.isEmpty && !tables.contains(where: matches) { return false }
        if excludeTables.contains(where: matches) { return false }
        return true
    }
}

extension String {
    /// Whether the whole string matches an anchored POSIX-style regex built by `TableSchemas.regexes`.
    func wholeMatch(regex: String) -> Bool {
        range(of: regex, options: .regularExpression) != nil
    }
}
