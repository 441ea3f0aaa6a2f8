import PostgresClient

/// The relations a migration carries, resolved once on the source with
/// `pg_dump`'s own pattern rules, and the one answer every phase uses:
/// `pg_dump` receives exactly these names, and the copy, the publication,
/// verify, the sequence sync and the cutover's second copy of unlogged tables
/// all take their tables from here. Nothing else matches a pattern.
///
/// The rules (`pg_dump`'s `processSQLNamePattern` and table selection):
/// * outside double quotes letters fold to lower case, `*` is any text, `?`
///   any character, `.` separates schema from name, and other regular
///   expression characters keep their meaning (`public.(t1|t2)`); inside
///   double quotes every character is literal; `$` is always literal;
/// * an unqualified table pattern matches only relations visible on the
///   source role's search_path (`pg_table_is_visible`), so `--exclude-table t1`
///   means the `t1` an unqualified query would see, not every schema's `t1`;
/// * `--table` selects relations of any kind (tables, partitioned tables,
///   views, materialized views, sequences, foreign tables); when given,
///   `--schema` and `--exclude-schema` do not apply; `--exclude-table`
///   always does;
/// * a partitioned table named by `--table` or `--exclude-table` means its
///   whole tree, as `pg_dump --table-and-children` does; a partition named
///   alone brings the definitions of the partitioned tables above it (not
///   their other partitions); with schema filters only, a partition goes by
///   its own schema;
/// * a pattern that matches nothing is an error.
struct TableSet: Sendable, Equatable, Codable {
    var filter: ObjectFilter
    /// Every relation selected, of any kind.
    var relations: Set<QualifiedName>
    /// Ordinary tables and leaf partitions whose rows travel (unlogged ones included), sorted.
    var tables: [QualifiedName]
    /// Those of `tables` that logical replication does not carry.
    var unlogged: Set<QualifiedName>
    /// Tables owned by an extension: `pg_dump` carries their rows by its configuration-table rules.
    var extensionMembers: Set<QualifiedName>
    /// Sequences selected themselves, owned by a selected relation, or used by a selected table's defaults.
    var sequences: [QualifiedName]
    /// Exact names for `pg_dump`: selected schemas, excluded schemas, selected and excluded relations.
    private var dumpSchemas: [String] = []
    private var dumpExcludedSchemas: [String] = []
    private var dumpRelations: [QualifiedName] = []
    private var dumpExcludedRelations: [QualifiedName] = []

    func contains(_ name: QualifiedName) -> Bool { relations.contains(name) }

    /// Whether `pg_dump` is told to dump `schema` itself (`--schema`), `CREATE SCHEMA` included.
    func dumpsSchema(_ schema: String) -> Bool { dumpSchemas.contains(schema) }

    /// What differs from `other`, relation by relation, for messages.
    func differences(from other: TableSet) -> [String] {
        relations.subtracting(other.relations).map { "\($0.shown) no longer there" }
            + other.relations.subtracting(relations).map { "\($0.shown) new" }
    }

    /// The unlogged ones of `tables`, sorted: the stream does not carry them, so they are copied again.
    var unloggedTables: [QualifiedName] { tables.filter(unlogged.contains) }

    /// The tables whose changes the stream must carry: `tables` less the unlogged ones.
    var published: [QualifiedName] { tables.filter { !unlogged.contains($0) } }

    /// The `pg_dump` arguments that select exactly this set: every pattern
    /// replaced by the names it matched, each quoted so no character is a wildcard.
    var pgDumpArguments: [String] {
        dumpSchemas.map { "--schema=\(SQL.identifier($0))" }
            + dumpExcludedSchemas.map { "--exclude-schema=\(SQL.identifier($0))" }
            + dumpRelations.map { "--table=\($0.exactPattern)" }
            + dumpExcludedRelations.map { "--exclude-table=\($0.exactPattern)" }
    }

    /// Resolves `filter` on `source`, whose search_path must be the role's default
    /// (as `pg_dump` resolves unqualified table patterns; see ``resolve(_:inSnapshotOn:stage:)``).
    static func resolve(_ filter: ObjectFilter, on source: Connection, stage: Stage = .validate) async throws -> TableSet {
        // As pg_dump: at most database.schema.name, and the database part must be this one.
        let database = try await source.scalar("SELECT current_database()") ?? ""
        for (pattern, most) in filter.tables.map({ ($0, 3) }) + filter.excludeTables.map({ ($0, 3) })
            + filter.schemas.map({ ($0, 2) }) + filter.excludeSchemas.map({ ($0, 2) })
        {
            let named = NamePattern(pattern)
            guard named.partCount <= most else {
                throw MigrationError(
                    stage, "improper qualified name (too many dotted names): \(pattern)",
                    fix: "write schema.table (or database.schema.table) for a table, schema (or database.schema) for a schema",
                    code: .tableSet)
            }
            if named.partCount == most, let regex = named.databaseRegex(parts: most),
                try await source.scalar("SELECT $1 ~ $2", [database, regex]) != "t"
            {
                throw MigrationError(
                    stage, "cross-database references are not implemented: \(pattern) (connected to \(SQL.identifier(database)))",
                    fix: "leave out the database part, or point \(Setting.source) at that database", code: .tableSet)
            }
        }
        var unmatched: [String] = []
        func schemas(_ patterns: [String], flag: String) async throws -> Set<String> {
            var found: Set<String> = []
            for pattern in patterns {
                let regex = NamePattern(pattern).schemaRegexForSchemaPattern
                let names = try await source.query("SELECT nspname FROM pg_namespace WHERE nspname ~ $1", [regex]).rows.compactMap { $0[0] }
                if names.isEmpty { unmatched.append("\(flag) \(pattern)") }
                found.formUnion(names)
            }
            return found
        }
        func relations(_ patterns: [String], flag: String) async throws -> Set<QualifiedName> {
            var found: Set<QualifiedName> = []
            for pattern in patterns {
                let (schema, name) = NamePattern(pattern).regexes
                let rows = try await source.query(
                    """
                    SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND c.relname ~ $1
                      AND CASE WHEN $2::text IS NULL THEN pg_table_is_visible(c.oid) ELSE n.nspname ~ $2 END
                    """, [name, schema]
                ).rows.map { QualifiedName(schema: $0[0]!, name: $0[1]!) }
                if rows.isEmpty { unmatched.append("\(flag) \(pattern)") }
                found.formUnion(rows)
            }
            return found
        }
        let includedSchemas = try await schemas(filter.schemas, flag: "\(Setting.schemas)")
        let excludedSchemas = try await schemas(filter.excludeSchemas, flag: "\(Setting.excludeSchemas)")
        // A partitioned table named means its whole tree (pg_dump 16's --table-and-children); a partition
        // named alone brings the definitions of the tables above it, not their other partitions.
        var includedRelations = try await relations(filter.tables, flag: "\(Setting.tables)")
        includedRelations.formUnion(try await partitionTrees(of: includedRelations, on: source, sql: Self.descendantsSQL))
        includedRelations.formUnion(try await partitionTrees(of: includedRelations, on: source, sql: Self.ancestorsSQL))
        var excludedRelations = try await relations(filter.excludeTables, flag: "\(Setting.excludeTables)")
        excludedRelations.formUnion(try await partitionTrees(of: excludedRelations, on: source, sql: Self.descendantsSQL))
        guard unmatched.isEmpty else {
            throw MigrationError(
                stage, "these patterns match nothing on the source: " + unmatched.joined(separator: ", "),
                fix: "check their spelling and schema; patterns follow pg_dump's rules (an unqualified table name matches "
                    + "only what the source role's search_path shows; quote a name to match it exactly)", code: .tableSet)
        }

        var set = TableSet(filter: filter, relations: [], tables: [], unlogged: [], extensionMembers: [], sequences: [])
        let rows = try await source.query(catalogSQL).rows
        for row in rows {
            let name = QualifiedName(schema: row[0]!, name: row[1]!)
            let selected =
                filter.tables.isEmpty
                ? (filter.schemas.isEmpty || includedSchemas.contains(name.schema)) && !excludedSchemas.contains(name.schema)
                : includedRelations.contains(name)
            guard selected && !excludedRelations.contains(name) else { continue }
            set.relations.insert(name)
            if row[2] == "r" {
                set.tables.append(name)
                if row[3] == "u" { set.unlogged.insert(name) }
                if row[4] == "t" { set.extensionMembers.insert(name) }
            }
        }
        // pg_dump dumps a sequence its selected table owns whatever excludes the sequence itself; one a
        // selected table only uses in a default is dumped when it is selected, or, with --table, named too.
        var defaultsOnly: [QualifiedName] = []
        for row in try await source.query(sequencesSQL, [SQL.textArray(set.relations.map(\.description))]).rows {
            let name = QualifiedName(schema: row[0]!, name: row[1]!)
            if row[2] == "default" && !set.relations.contains(name) {
                // Without --table it is outside the selected schemas, and pg_dump leaves it out.
                guard !filter.tables.isEmpty && !excludedRelations.contains(name) else { continue }
                defaultsOnly.append(name)
            }
            set.sequences.append(name)
        }
        set.dumpSchemas = filter.tables.isEmpty ? includedSchemas.sorted() : []
        set.dumpExcludedSchemas = filter.tables.isEmpty ? excludedSchemas.sorted() : []
        set.dumpRelations = (includedRelations.union(filter.tables.isEmpty ? [] : defaultsOnly)).sorted { $0.description < $1.description }
        set.dumpExcludedRelations = excludedRelations.sorted { $0.description < $1.description }
        return set
    }

    /// Resolves `filter` inside a snapshot-importing transaction (whose search_path
    /// is empty): the role's default search_path for the resolution, then empty again.
    static func resolve(_ filter: ObjectFilter, inSnapshotOn session: Connection, stage: Stage) async throws -> TableSet {
        try await session.execute("SET LOCAL search_path TO DEFAULT")
        let set = try await resolve(filter, on: session, stage: stage)
        try await session.execute("SET LOCAL search_path = ''")
        return set
    }

    /// Resolves the filter again inside the copy's snapshot and refuses a set that
    /// differs from this one (resolved at Validate): a table created, dropped or
    /// renamed in between would be copied without being published, or published
    /// without being copied.
    func checkUnchanged(inSnapshotOn session: Connection, stage: Stage) async throws {
        let resolved = try await Self.resolve(filter, inSnapshotOn: session, stage: stage)
        guard resolved == self else {
            throw MigrationError(
                stage,
                "the tables to migrate changed between Validate and the snapshot (a table was created, dropped or "
                    + "renamed meanwhile): " + differences(from: resolved).joined(separator: ", "),
                fix: "run again once no schema change is under way on the source", code: .tableSet)
        }
    }

    /// The relations `sql` (``descendantsSQL`` or ``ancestorsSQL``) finds for `relations`.
    private static func partitionTrees(of relations: Set<QualifiedName>, on source: Connection, sql: String) async throws
        -> Set<QualifiedName>
    {
        guard !relations.isEmpty, await source.serverVersion >= 120_000 else { return [] }
        let rows = try await source.query(sql, [SQL.textArray(relations.map(\.description))]).rows
        return Set(rows.map { QualifiedName(schema: $0[0]!, name: $0[1]!) })
    }

    /// Every partition below the partitioned tables among `$1` (quoted names).
    private static let descendantsSQL = """
        SELECT n.nspname, c.relname
        FROM unnest($1::text[]) AS r(name), pg_partition_tree(r.name::regclass) t
        JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
        """

    /// Every partitioned table above the partitions among `$1` (quoted names).
    private static let ancestorsSQL = """
        SELECT n.nspname, c.relname
        FROM unnest($1::text[]) AS r(name), pg_partition_ancestors(r.name::regclass) a(relid)
        JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace
        """

    /// Every relation of a kind `pg_dump` selects, in user schemas, not temporary.
    private static let catalogSQL = """
        SELECT n.nspname, c.relname, c.relkind::text, c.relpersistence::text,
               EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND c.relpersistence <> 't'
          AND \(UserSchemas.predicate("n.nspname"))
        ORDER BY 1, 2
        """

    /// The sequences of a set of relations (`$1`, quoted names): selected
    /// themselves, owned by one of them (serial, identity), or named by a column
    /// default of one of them.
    private static let sequencesSQL = """
        WITH selected AS (SELECT to_regclass(name) AS oid FROM unnest($1::text[]) AS name),
        kinds AS (
            SELECT s.oid,
                   CASE WHEN s.oid IN (SELECT oid FROM selected) THEN 'selected'
                        WHEN EXISTS (SELECT 1 FROM pg_depend d
                                     WHERE d.classid = 'pg_class'::regclass AND d.objid = s.oid AND d.refclassid = 'pg_class'::regclass
                                       AND d.deptype IN ('a', 'i') AND d.refobjid IN (SELECT oid FROM selected)) THEN 'owned'
                        WHEN EXISTS (SELECT 1 FROM pg_attrdef ad JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
                                     WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = s.oid
                                       AND ad.adrelid IN (SELECT oid FROM selected)) THEN 'default'
                   END AS kind
            FROM pg_class s WHERE s.relkind = 'S')
        SELECT n.nspname, s.relname, k.kind
        FROM kinds k JOIN pg_class s ON s.oid = k.oid JOIN pg_namespace n ON n.oid = s.relnamespace
        WHERE k.kind IS NOT NULL
        ORDER BY 1, 2
        """
}

/// A `psql`/`pg_dump` name pattern turned into the anchored regular
/// expressions `pg_dump` builds from it (`processSQLNamePattern`).
struct NamePattern {
    var pattern: String

    init(_ pattern: String) { self.pattern = pattern }

    /// The schema part (nil when the pattern has none) and the name part.
    var regexes: (schema: String?, name: String) {
        let parts = self.parts
        let anchored = parts.map { "^(\($0))$" }
        return anchored.count >= 2 ? (anchored[anchored.count - 2], anchored[anchored.count - 1]) : (nil, anchored[0])
    }

    /// For `--schema`: the whole pattern names a schema (its last part, as pg_dump reads `db.schema`).
    var schemaRegexForSchemaPattern: String { regexes.name }

    /// How many dot-separated parts the pattern has (dots inside double quotes do not count).
    var partCount: Int { parts.count }

    /// The database part's regex, when the pattern has `parts` parts (`db.schema.table`, or `db.schema` for a schema).
    func databaseRegex(parts expected: Int) -> String? {
        let parts = self.parts
        return parts.count == expected ? "^(\(parts[0]))$" : nil
    }

    private var parts: [String] {
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
            } else if character == "$" {
                current += "\\$"  // always literal: it may appear in identifiers, and the pattern is anchored anyway
            } else if inQuotes {
                current += "|*+?()[]{}.^$\\".contains(character) ? "\\\(character)" : String(character)
            } else if character == "[", characters.first == "]" {
                current += "\\["  // an array type's name, far likelier than an empty bracket expression
            } else {
                current += character.isASCII ? character.lowercased() : String(character)
            }
        }
        parts.append(current)
        return parts
    }
}
