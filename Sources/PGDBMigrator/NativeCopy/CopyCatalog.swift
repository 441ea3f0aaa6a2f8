import PostgresClient

/// An index or a constraint backed by one (primary key, unique, exclusion)
/// that the native copy builds itself as soon as its table is loaded, instead
/// of waiting for `pg_restore`'s post-data pass.
struct IndexBuild: Sendable, Hashable {
    var table: QualifiedName
    var name: String
    /// The `pg_restore --list` entry this replaces: the index's pg_class oid,
    /// or the constraint's pg_constraint oid.
    var catalogOID: String
    /// `INDEX` or `CONSTRAINT`: the entry's type, checked with the oid.
    var entryType: String
    /// What to run, in order, on the target.
    var statements: [String]
}

/// What the native copy reads from the source's catalog, in the copy's snapshot.
///
/// Tables are the migration's (``TableSet/tables``) that are not owned by an
/// extension (those `pg_dump` handles with its configuration-table rules, so
/// they stay in the archive).
struct CopyCatalog {
    var set: TableSet

    /// The migration's tables as the source's catalog describes them, those owned by an extension left to `pg_dump`.
    func tables(on source: Connection) async throws -> [CatalogTable] {
        try await TableCatalog.tables(set.tables.filter { !set.extensionMembers.contains($0) }, on: source)
    }

    /// The indexes and index-backed constraints of `tables` that can be built
    /// independently: valid, in the default tablespace, and not part of a
    /// partitioned index (`pg_restore` builds and attaches those in order).
    /// Definitions are fully qualified because the session's search_path is empty.
    func indexBuilds(of tables: [CatalogTable], on source: Connection) async throws -> [IndexBuild] {
        let names = Dictionary(uniqueKeysWithValues: tables.map { ($0.oid, $0.name) })
        let oids = "{" + tables.map(\.oid).joined(separator: ",") + "}"
        return try await source.query(
            """
            SELECT i.indrelid::text, ic.relname, i.indexrelid::text, pg_get_indexdef(i.indexrelid),
                   con.oid::text, pg_get_constraintdef(con.oid), i.indisreplident, i.indisclustered, con.conname
            FROM pg_index i
            JOIN pg_class ic ON ic.oid = i.indexrelid
            LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                                         AND con.contype IN ('p', 'u', 'x')
            WHERE i.indrelid = ANY($1::oid[]) AND i.indisvalid AND i.indislive
              AND ic.reltablespace = 0 AND NOT ic.relispartition
              -- pg_dump's INDEX entry carries these too: such indexes are left to pg_restore
              AND NOT EXISTS (SELECT 1 FROM pg_attribute ia WHERE ia.attrelid = i.indexrelid AND ia.attstattarget > 0)
              AND NOT EXISTS (SELECT 1 FROM pg_depend x WHERE x.classid = 'pg_class'::regclass AND x.objid = i.indexrelid
                                                          AND x.deptype = 'x')
            ORDER BY i.indrelid, ic.relname
            """, [oids]
        ).rows.map { row in
            let table = names[row[0]!]!
            let index = SQL.identifier(row[1]!)
            var statements: [String]
            if let definition = row[5], let constraint = row[8] {
                statements = ["ALTER TABLE ONLY \(table) ADD CONSTRAINT \(SQL.identifier(constraint)) \(definition)"]
            } else {
                statements = [row[3]!]
            }
            if row[6] == "t" { statements.append("ALTER TABLE ONLY \(table) REPLICA IDENTITY USING INDEX \(index)") }
            if row[7] == "t" { statements.append("ALTER TABLE \(table) CLUSTER ON \(index)") }
            return IndexBuild(
                table: table, name: row[1]!, catalogOID: row[4] ?? row[2]!, entryType: row[4] == nil ? "INDEX" : "CONSTRAINT",
                statements: statements)
        }
    }
}
