import Foundation
import PostgresClient

/// What relay apply needs to know of a table on the target, read once as each
/// attempt starts (schema changes while streaming are not carried).
struct RelayTargetTable: Sendable, Equatable {
    /// Identity columns GENERATED ALWAYS: an UPDATE may not set them, so a change of one is applied as a
    /// delete and an insert (``RelayRelation/Shape/Kind/replace``).
    var generatedAlways: Set<String> = []
    /// Each column's type (its OID on the target), for values that must come as that type.
    var types: [String: UInt32] = [:]
    /// Per unique index or exclusion constraint, its columns sorted; nil for one that is not a plain,
    /// immediately checked unique index on columns.
    var uniqueIndexes: [[String]?] = []

    /// Every unique index is a plain, immediate one on exactly `key`'s columns (a table with none counts):
    /// changes to rows of different keys can then go in any order.
    func isOnlyUnique(_ key: [String]) -> Bool {
        let sorted = key.sorted()
        return uniqueIndexes.allSatisfy { $0 == sorted }
    }

    /// The target's tables in user schemas, by name.
    static func read(on target: Connection) async throws -> [QualifiedName: RelayTargetTable] {
        let userSchemas = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'"
        var tables: [QualifiedName: RelayTargetTable] = [:]
        for row in try await target.query(
            """
            SELECT n.nspname, c.relname, a.attname, a.atttypid::int8::text, (a.attidentity = 'a')::text
              FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped AND \(userSchemas)
            """
        ).rows {
            let name = QualifiedName(schema: row[0] ?? "", name: row[1] ?? "")
            tables[name, default: .init()].types[row[2] ?? ""] = row[3].flatMap { UInt32($0) }
            if row[4] == "true" { tables[name, default: .init()].generatedAlways.insert(row[2] ?? "") }
        }
        for row in try await target.query(
            """
            SELECT n.nspname, c.relname,
                   CASE WHEN i.indisunique AND i.indimmediate AND i.indexprs IS NULL AND i.indpred IS NULL
                        THEN (SELECT json_agg(a.attname) FROM pg_attribute a
                               WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey))::text END
              FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE (i.indisunique OR i.indisexclusion) AND \(userSchemas)
            """
        ).rows {
            let columns = row[2].flatMap { try? JSONDecoder().decode([String].self, from: Data($0.utf8)).sorted() }
            tables[QualifiedName(schema: row[0] ?? "", name: row[1] ?? ""), default: .init()].uniqueIndexes.append(columns)
        }
        return tables
    }
}
