import Foundation
import PostgresClient

/// One table as a server's catalog describes it: what the copy, verify and the
/// cutover's second copy of unlogged tables need to know to read and split it.
struct CatalogTable: Sendable, Hashable, Codable {
    var oid: String
    var name: QualifiedName
    /// Bytes on disk (heap and TOAST): what "largest first" and splitting go by.
    var bytes: Int
    /// Blocks of the heap, for splitting by ctid ranges.
    var blocks: Int
    /// The stored columns, quoted and comma-separated; generated columns are left out
    /// because the target computes them. Empty for a table without columns.
    var columns: String
    /// The primary key's columns, quoted, in key order (empty without one).
    var keyColumns: [String] = []
    /// A single-column integer primary key, quoted, for splitting by key ranges.
    var integerKey: String?
    /// Every column is of a built-in type (under its domains; or an array of one) with
    /// binary I/O that carries no object identifiers, so the table can travel in
    /// binary COPY between servers of one major version.
    var binarySafe: Bool = false

    /// `COPY` target list: `"t" ("a", "b")`, or just the table when it has no columns.
    var copyTarget: String { columns.isEmpty ? name.description : "\(name) (\(columns))" }

    init(
        oid: String, name: QualifiedName, bytes: Int, blocks: Int, columns: String, keyColumns: [String] = [],
        integerKey: String? = nil, binarySafe: Bool = false
    ) {
        self.oid = oid
        self.name = name
        self.bytes = bytes
        self.blocks = blocks
        self.columns = columns
        self.keyColumns = keyColumns
        self.integerKey = integerKey
        self.binarySafe = binarySafe
    }

    /// A plan written before `keyColumns` was recorded still reads.
    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        oid = try container.decode(String.self, forKey: .oid)
        name = try container.decode(QualifiedName.self, forKey: .name)
        bytes = try container.decode(Int.self, forKey: .bytes)
        blocks = try container.decode(Int.self, forKey: .blocks)
        columns = try container.decode(String.self, forKey: .columns)
        keyColumns = try container.decodeIfPresent([String].self, forKey: .keyColumns) ?? []
        integerKey = try container.decodeIfPresent(String.self, forKey: .integerKey)
        binarySafe = try container.decodeIfPresent(Bool.self, forKey: .binarySafe) ?? false
    }
}

/// The one reading of tables from a catalog. Which tables a migration carries
/// is ``TableSet``'s decision; this only describes them, on whichever server
/// is asked (verify asks both).
enum TableCatalog {
    /// SQL true when every column of the table `relation` (an SQL expression of its oid) has a type with
    /// binary I/O that carries no object identifiers: its values can travel in binary between servers of one
    /// major version (COPY, and relay apply's stream).
    static func binarySafe(_ relation: String) -> String {
        """
        NOT EXISTS (SELECT 1 FROM pg_attribute a
                    JOIN pg_type t ON t.oid = a.atttypid
                    LEFT JOIN pg_type d ON d.oid = t.typbasetype
                    -- the type under up to two domains
                    JOIN pg_type b ON b.oid = CASE WHEN t.typtype <> 'd' THEN t.oid
                                                   WHEN d.typtype <> 'd' THEN d.oid ELSE d.typbasetype END
                    LEFT JOIN pg_type e ON e.oid = b.typelem AND b.typcategory = 'A'
                    WHERE a.attrelid = \(relation) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                      AND (b.typsend = 0 OR b.typreceive = 0
                           -- user types (enums, composites, extension types, and arrays of them) carry
                           -- server-specific OIDs in binary; reg* types are raw OIDs
                           OR b.oid >= 16384 OR e.oid >= 16384
                           OR (b.typnamespace = 'pg_catalog'::regnamespace AND b.typname LIKE 'reg%')
                           OR (e.typnamespace = 'pg_catalog'::regnamespace AND e.typname LIKE 'reg%')))
        """
    }

    /// The ordinary tables (leaf partitions included; partitioned parents hold no
    /// rows) among `names` that exist on this server, sorted by name; nil
    /// `names`: every one in user schemas.
    static func tables(_ names: [QualifiedName]?, on connection: Connection) async throws -> [CatalogTable] {
        try await connection.query(
            """
            SELECT c.oid::text, n.nspname, c.relname, pg_table_size(c.oid)::text,
                   (pg_relation_size(c.oid) / current_setting('block_size')::int)::text,
                   coalesce((SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a
                             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), ''),
                   (SELECT json_agg(quote_ident(a.attname) ORDER BY k.position)::text
                    FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, position)
                    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                    WHERE i.indrelid = c.oid AND i.indisprimary AND k.position <= i.indnkeyatts),
                   (SELECT quote_ident(a.attname) FROM pg_index i
                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                     WHERE i.indrelid = c.oid AND i.indisprimary AND i.indnkeyatts = 1
                       AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)),
                   \(binarySafe("c.oid"))
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND \(UserSchemas.predicate("n.nspname"))
              AND ($1::text[] IS NULL OR (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[])))
            ORDER BY 2, 3
            """, [names.map { SQL.textArray($0.map(\.schema)) }, names.map { SQL.textArray($0.map(\.name)) }]
        ).rows.map { row in
            CatalogTable(
                oid: row[0]!, name: QualifiedName(schema: row[1]!, name: row[2]!), bytes: Int(row[3]!) ?? 0,
                blocks: Int(row[4]!) ?? 0, columns: row[5]!,
                keyColumns: row[6].flatMap { try? JSONDecoder().decode([String].self, from: Data($0.utf8)) } ?? [],
                integerKey: row[7], binarySafe: row[8] == "t")
        }
    }
}
