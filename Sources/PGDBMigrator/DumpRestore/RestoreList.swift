import PostgresClient

/// The `pg_restore --list` of an archive, with some entries left out: an entry is
/// `dumpId; tableoid oid TYPE schema name owner`, and a line starting with `;` is
/// skipped by `pg_restore --use-list`.
struct RestoreList {
    var lines: [String]

    /// An archive entry, by the catalog it comes from and its oid there (an oid alone may
    /// repeat across catalogs).
    struct Entry: Hashable, Sendable {
        var catalog: String
        var oid: String

        static func index(_ oid: String) -> Entry { Entry(catalog: "1259", oid: oid) }  // pg_class
        static func constraint(_ oid: String) -> Entry { Entry(catalog: "2606", oid: oid) }  // pg_constraint
    }

    /// What to leave out: `entries`, and the comments whose tag (`PUBLICATION "name"`) is in `commentTags`.
    struct Exclusions: Sendable {
        var entries: Set<Entry> = []
        var commentTags: Set<String> = []
        var isEmpty: Bool { entries.isEmpty && commentTags.isEmpty }
    }

    func excluding(_ exclusions: Exclusions) -> [String] {
        lines.map { line in
            let fields = line.split(separator: " ", maxSplits: 3)
            guard fields.count == 4, fields[0].hasSuffix(";") else { return line }
            if exclusions.entries.contains(Entry(catalog: String(fields[1]), oid: String(fields[2]))) { return ";" + line }
            if fields[1] == "0", fields[3].hasPrefix("COMMENT - "),
                exclusions.commentTags.contains(where: { fields[3].hasPrefix("COMMENT - \($0) ") })
            {
                return ";" + line
            }
            return line
        }
    }

    /// The publications this tool created on the source (any run's: they carry its mark), their tables and
    /// schemas, and their comments: a migration never carries them to the target, where they would publish
    /// nothing anyone asked for. The user's own publications travel as any other object.
    static func ownPublications(on source: Connection) async throws -> Exclusions {
        let version = await source.serverVersion
        let rows = try await source.query(
            """
            WITH ours AS (SELECT oid, pubname FROM pg_publication WHERE obj_description(oid, 'pg_publication') LIKE $1)
            SELECT '6104', oid::text, 'PUBLICATION ' || quote_ident(pubname) FROM ours
            UNION ALL SELECT '6106', r.oid::text, NULL FROM pg_publication_rel r JOIN ours ON ours.oid = r.prpubid
            """
                + (version >= 150_000
                    ? " UNION ALL SELECT '6237', n.oid::text, NULL FROM pg_publication_namespace n JOIN ours ON ours.oid = n.pnpubid" : ""),
            [OwnershipMark.prefix + "%"])
        var exclusions = Exclusions()
        for row in rows.rows {
            exclusions.entries.insert(Entry(catalog: row[0]!, oid: row[1]!))
            if let tag = row[2] { exclusions.commentTags.insert(tag) }
        }
        return exclusions
    }
}
