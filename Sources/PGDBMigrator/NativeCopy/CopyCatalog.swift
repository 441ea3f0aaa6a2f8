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

/// One table the native copy carries, as the source's catalog describes it in the snapshot.
struct CopyTable: Sendable, Hashable, Codable {
    var oid: String
    var name: QualifiedName
    /// Bytes on disk (heap and TOAST): what "largest first" and splitting go by.
    var bytes: Int
    /// Blocks of the heap, for splitting by ctid ranges.
    var blocks: Int
    /// The stored columns, quoted and comma-separated; generated columns are left out
    /// because the target computes them. Empty for a table without columns.
    var columns: String
    /// A single-column integer primary key, quoted, for splitting by key ranges.
    var integerKey: String?
    /// Every column is of a built-in type (under its domains; or an array of one) with
    /// binary I/O that carries no object identifiers, so the table can travel in
    /// binary COPY between servers of one major version.
    var binarySafe: Bool = false

    /// `COPY` target list: `"t" ("a", "b")`, or just the table when it has no columns.
    var copyTarget: String { columns.isEmpty ? name.description : "\(name) (\(columns))" }
}

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

    func tables(on source: Connection) async throws -> [CopyTable] {
        try await source.query(
            """
            SELECT c.oid::text, n.nspname, c.relname, pg_table_size(c.oid)::text,
                   (pg_relation_size(c.oid) / current_setting('block_size')::int)::text,
                   coalesce((SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a
                             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), ''),
                   (SELECT quote_ident(a.attname) FROM pg_index i
                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                     WHERE i.indrelid = c.oid AND i.indisprimary AND i.indnkeyatts = 1
                       AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)),
                   NOT EXISTS (SELECT 1 FROM pg_attribute a
                               JOIN pg_type t ON t.oid = a.atttypid
                               LEFT JOIN pg_type d ON d.oid = t.typbasetype
                               -- the type under up to two domains
                               JOIN pg_type b ON b.oid = CASE WHEN t.typtype <> 'd' THEN t.oid
                                                              WHEN d.typtype <> 'd' THEN d.oid ELSE d.typbasetype END
                               LEFT JOIN pg_type e ON e.oid = b.typelem AND b.typcategory = 'A'
                               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                                 AND (b.typsend = 0 OR b.typreceive = 0
                                      -- user types (enums, composites, extension types, and arrays of them) carry
                                      -- server-specific OIDs in binary; reg* types are raw OIDs
                                      OR b.oid >= 16384 OR e.oid >= 16384
                                      OR (b.typnamespace = 'pg_catalog'::regnamespace AND b.typname LIKE 'reg%')
                                      OR (e.typnamespace = 'pg_catalog'::regnamespace AND e.typname LIKE 'reg%')))
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND \(UserSchemas.predicate("n.nspname"))
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                                        AND d.deptype = 'e')
            ORDER BY 2, 3
            """
        ).rows.compactMap { [wanted = Set(set.tables)] row in
            let name = QualifiedName(schema: row[1]!, name: row[2]!)
            guard wanted.contains(name) else { return nil }
            return CopyTable(
                oid: row[0]!, name: name, bytes: Int(row[3]!) ?? 0, blocks: Int(row[4]!) ?? 0, columns: row[5]!,
                integerKey: row[6], binarySafe: row[7] == "t")
        }
    }

    /// The indexes and index-backed constraints of `tables` that can be built
    /// independently: valid, in the default tablespace, and not part of a
    /// partitioned index (`pg_restore` builds and attaches those in order).
    /// Definitions are fully qualified because the session's search_path is empty.
    func indexBuilds(of tables: [CopyTable], on source: Connection) async throws -> [IndexBuild] {
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
