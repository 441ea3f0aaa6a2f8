import Foundation
import PostgresClient

/// The publication on the source that says which tables the slot streams.
struct Publication {
    var name: String
    /// The run that creates it (its mark), or that looks for what it created.
    var runID: String?

    func exists(on source: Connection) async throws -> Bool {
        try await source.scalar("SELECT 1 FROM pg_publication WHERE pubname = $1", [name]) != nil
    }

    /// The tables whose changes the publication carries, as leaf tables: with
    /// `publish_via_partition_root` it lists roots, which stand for their partitions.
    func publishedTables(on source: Connection) async throws -> Set<QualifiedName> {
        Set(
            try await source.query(
                """
                SELECT n.nspname, c.relname
                FROM pg_publication_tables pt
                JOIN pg_namespace pn ON pn.nspname = pt.schemaname
                JOIN pg_class p ON p.relname = pt.tablename AND p.relnamespace = pn.oid
                -- pg_partition_tree lists a partitioned table's leaves, and nothing for a table that is not in a tree
                JOIN LATERAL (SELECT relid FROM pg_partition_tree(p.oid) WHERE isleaf UNION SELECT p.oid WHERE p.relkind = 'r') leaf ON true
                JOIN pg_class c ON c.oid = leaf.relid JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE pt.pubname = $1
                """, [name]
            ).rows.map { QualifiedName(schema: $0[0]!, name: $0[1]!) })
    }

    /// Why the publication does not carry exactly every change of `tables`, one
    /// line per problem; empty when it does. A table it misses would be copied
    /// as of the snapshot and never streamed; a row filter, a column list or a
    /// missing `publish` action would drop changes; a table beyond the set
    /// would stream changes into a table the target does not have.
    func coverageProblems(of tables: TableSet, on source: Connection) async throws -> [String] {
        let published = try await publishedTables(on: source)
        let wanted = Set(tables.published)
        var problems = wanted.subtracting(published).map { "it does not publish \($0.shown)" }.sorted()
        problems += published.subtracting(wanted).map { "it publishes \($0.shown), which the migration does not carry" }.sorted()
        let viaRoot = await source.serverVersion >= 130_000 ? "pubviaroot" : "false"  // (PostgreSQL 13+)
        guard
            let row = try await source.query(
                "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, \(viaRoot) FROM pg_publication WHERE pubname = $1", [name]
            ).rows.first
        else { return ["it does not exist"] }
        let actions = zip(["insert", "update", "delete", "truncate"], row.prefix(4)).filter { $0.1 != "t" }.map(\.0)
        if !actions.isEmpty { problems.append("it does not publish \(actions.joined(separator: ", ")) (publish = …)") }
        if row[4] == "t" {
            // Changes arrive as the partition root's: the root must be migrated too.
            let roots = try await source.query(
                """
                SELECT pt.schemaname, pt.tablename FROM pg_publication_tables pt
                JOIN pg_namespace n ON n.nspname = pt.schemaname JOIN pg_class c ON c.relname = pt.tablename AND c.relnamespace = n.oid
                WHERE pt.pubname = $1 AND c.relkind = 'p'
                """, [name]
            ).rows.map { QualifiedName(schema: $0[0]!, name: $0[1]!) }
            problems += roots.filter { !tables.contains($0) }
                .map {
                    "it publishes through the partition root \($0.shown) (publish_via_partition_root), which the migration does not carry"
                }
        }
        if await source.serverVersion >= 150_000 {
            problems += try await source.query(
                """
                SELECT n.nspname, c.relname, pr.prqual IS NOT NULL, pr.prattrs IS NOT NULL
                FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE p.pubname = $1 AND (pr.prqual IS NOT NULL OR pr.prattrs IS NOT NULL)
                ORDER BY 1, 2
                """, [name]
            ).rows.map { row in
                let table = QualifiedName(schema: row[0]!, name: row[1]!).shown
                return row[2] == "t" ? "it has a row filter on \(table)" : "it has a column list on \(table)"
            }
        }
        return problems
    }

    /// Creates the publication: FOR ALL TABLES without filters, else FOR TABLE with
    /// exactly the migration's published tables (partitions by their own names).
    func create(on source: Connection, tables: TableSet) async throws {
        let published = tables.published
        if !tables.filter.isEmpty && published.isEmpty {
            throw MigrationError(
                .prepareSnapshot, "the filters select no table to publish",
                fix: "check \(Setting.schemas)/\(Setting.tables)/\(Setting.excludeSchemas)/\(Setting.excludeTables)", code: .tableSet)
        }
        let what = tables.filter.isEmpty ? "FOR ALL TABLES" : "FOR TABLE " + published.map(\.description).joined(separator: ", ")
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
                fix: tables.filter.isEmpty
                    ? "FOR ALL TABLES needs a superuser; create the publication yourself and pass \(Setting.publication)"
                    : "the source role must own the published tables; or create the publication yourself and pass \(Setting.publication)",
                underlying: error)
        }
    }

    /// Who created the publication, by its mark; nil when there is none of that name.
    func owner(on source: Connection) async throws -> OwnershipMark.Owner? {
        guard
            let row = try await source.query(
                "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = $1", [name]
            ).rows.first
        else { return nil }
        return OwnershipMark.owner(ofObjectCommented: row[0], runID: runID)
    }

    func drop(on source: Connection) async throws {
        try await source.execute("DROP PUBLICATION IF EXISTS \(SQL.identifier(name))")
    }
}
