import PostgresClient

/// Logical replication does not carry sequence values: at cutover every
/// sequence of the migrated set (owned, identity and free-standing) is set
/// on the target to the source's `last_value`/`is_called`, so the first
/// INSERT after cutover does not collide with a replicated row.
struct SequenceSync {
    var filter: ObjectFilter

    struct Result {
        var synced: Int
        /// Sequence name (as `quote_ident` prints it) → why it failed.
        var failures: [String: String]
    }

    func run(source: Connection, target: Connection) async throws -> Result {
        let rows = try await source.query(
            """
            SELECT n.nspname, c.relname, owner_ns.nspname, owner.relname,
                   quote_ident(n.nspname) || '.' || quote_ident(c.relname)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_depend d ON d.objid = c.oid AND d.classid = 'pg_class'::regclass
                                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
            LEFT JOIN pg_class owner ON owner.oid = d.refobjid
            LEFT JOIN pg_namespace owner_ns ON owner_ns.oid = owner.relnamespace
            WHERE c.relkind = 'S' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
            ORDER BY 1, 2
            """
        ).rows
        var synced = 0
        var failures: [String: String] = [:]
        for row in rows {
            let (schema, name) = (row[0]!, row[1]!)
            // An owned sequence follows its table through the filters; a free-standing one its schema.
            let included =
                if let ownerSchema = row[2], let ownerTable = row[3] {
                    filter.includes(schema: ownerSchema, table: ownerTable)
                } else {
                    filter.includes(schema: schema, table: name)  // pg_dump's --table matches sequences too
                }
            guard included else { continue }
            let qualified = row[4]!  // quote_ident's form, as every report names relations
            do {
                let state = try await source.query("SELECT last_value::text, is_called::text FROM \(qualified)").rows[0]
                try await target.query(
                    "SELECT setval($1::regclass, $2::bigint, $3::bool)", [qualified, state[0], state[1]])
                synced += 1
            } catch let error as PostgresError {
                failures[qualified] = error.description
            }
        }
        return Result(synced: synced, failures: failures)
    }
}
