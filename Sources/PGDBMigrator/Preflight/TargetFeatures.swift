import PostgresClient

/// What the source's data needs from the target server's build and setup, found at
/// Validate instead of mid-copy, after the schema is already restored: XML support for
/// `xml` columns, the collations columns use (and ICU for ICU collations), the
/// tablespaces tables and indexes live in, and an existing target database's encoding.
struct TargetFeatures {
    var tables: TableSet

    /// What the target lacks, each with its fix.
    func problems(source: Connection, target: Connection, existingTargetEncoding: String?, sourceEncoding: String) async throws
        -> [String]
    {
        var problems: [String] = []
        let list = SQL.textArray(tables.tables.map(\.description))

        let xmlTables = try await source.query(Self.xmlTablesSQL, [list]).rows.compactMap { $0[0] }
        if !xmlTables.isEmpty, !(try await Self.supportsXML(target)) {
            problems.append(
                "the target server was built without XML support (libxml), and these tables have xml columns: "
                    + xmlTables.joined(separator: ", ")
                    + " — use a build with XML support on the target, or leave them out with \(Setting.excludeTables)")
        }

        let collations = try await source.query(Self.collationsSQL, [list]).rows.map { (name: $0[0]!, icu: $0[1] == "i") }
        let targetCollations = Set(try await target.query("SELECT collname FROM pg_collation").rows.compactMap { $0[0] })
        let missing = collations.filter { !targetCollations.contains($0.name) }.map(\.name)
        if !missing.isEmpty {
            problems.append(
                "collations the migrated columns use are missing on the target: " + missing.joined(separator: ", ")
                    + (collations.contains(where: \.icu) ? " (ICU collations need a target built with ICU)" : "")
                    + " — create them on the target (CREATE COLLATION), or install the locales and run pg_import_system_collations")
        }

        let tablespaces = try await source.query(Self.tablespacesSQL, [list]).rows.compactMap { $0[0] }
        let targetTablespaces = Set(try await target.query("SELECT quote_ident(spcname) FROM pg_tablespace").rows.compactMap { $0[0] })
        let missingSpaces = tablespaces.filter { !targetTablespaces.contains($0) }
        if !missingSpaces.isEmpty {
            problems.append(
                "tablespaces the migrated tables or indexes live in are missing on the target: "
                    + missingSpaces.joined(separator: ", ") + " — create them on the target (CREATE TABLESPACE)")
        }

        if let existingTargetEncoding, existingTargetEncoding != sourceEncoding, existingTargetEncoding != "UTF8" {
            problems.append(
                "the target database's encoding is \(existingTargetEncoding) and the source's \(sourceEncoding): text could not be "
                    + "converted — migrate into a UTF8 (or \(sourceEncoding)) database, or let the tool create it")
        }
        return problems
    }

    /// Whether the server can parse XML: a build without libxml refuses with "unsupported XML feature".
    static func supportsXML(_ server: Connection) async throws -> Bool {
        do {
            _ = try await server.scalar("SELECT xmlparse(document '<migration/>')::text")
            return true
        } catch let error as PostgresError where error.sqlState == "0A000" {
            return false
        }
    }

    /// Tables among `$1` with a column of type xml, an array of it, or a domain over either.
    static let xmlTablesSQL = """
        SELECT DISTINCT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM unnest($1::text[]) AS r(name)
        JOIN pg_class c ON c.oid = r.name::regclass JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        JOIN pg_type t ON t.oid = a.atttypid
        WHERE 'xml'::regtype IN (t.oid, t.typelem, t.typbasetype,
                                 (SELECT b.typelem FROM pg_type b WHERE b.oid = t.typbasetype))
        ORDER BY 1
        """

    /// The collations (outside the default) that columns of `$1` use, with their provider; a collation
    /// in a user schema is created by the restore itself, so only the server's own ones are listed.
    static let collationsSQL = """
        SELECT DISTINCT c.collname, c.collprovider::text FROM unnest($1::text[]) AS r(name)
        JOIN pg_attribute a ON a.attrelid = r.name::regclass AND a.attnum > 0 AND NOT a.attisdropped
        JOIN pg_collation c ON c.oid = a.attcollation
        WHERE a.attcollation <> 0 AND c.collname NOT IN ('default', 'C', 'POSIX')
          AND c.collnamespace = 'pg_catalog'::regnamespace
        ORDER BY 1
        """

    /// The tablespaces, other than the database's default, that tables of `$1` or their indexes live in.
    static let tablespacesSQL = """
        SELECT DISTINCT quote_ident(s.spcname) FROM unnest($1::text[]) AS r(name)
        JOIN pg_class c ON c.oid = r.name::regclass OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = r.name::regclass)
        JOIN pg_tablespace s ON s.oid = c.reltablespace
        ORDER BY 1
        """
}
