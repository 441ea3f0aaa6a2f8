import PostgresClient

/// Logical replication carries neither large objects nor unlogged tables: the
/// copy holds them as of the snapshot. At a frozen cutover nothing changes any
/// more on the source, so they are copied again, and the target gets them as
/// of the cutover.
struct NonReplicatedData {
    /// The migration's unlogged tables.
    var tables: [QualifiedName]
    var events: EventEmitter
    /// Where the events go: the frozen cutover, or a re-attach after an interruption.
    var stage: Stage = .cutover

    func copy(source: Connection, target: Connection) async throws {
        if !tables.isEmpty {
            let encoding = try await source.scalar("SHOW server_encoding") ?? "UTF8"
            for session in [source, target] { try await session.pinTextFormats(encoding: encoding) }
        }
        let copy = TableCopy(source: source, target: target)
        for table in try await TableCatalog.tables(tables, on: source) {
            let shown = table.name.shown
            let result = try await copy.run(.whole(table)) { _ in }
            events.info(
                stage, "copied unlogged table \(shown) again (\(result.rows) rows)",
                ["table": .string(shown), "rows": .int(result.rows)])
        }
        let count = try await copyLargeObjects(source: source, target: target)
        if count > 0 { events.info(stage, "copied \(count) large object(s) again", ["large_objects": .int(count)]) }
    }

    /// Makes the target's large objects equal to the source's: content
    /// rewritten in place (keeping owner, grants and comment), new ones
    /// created, removed ones unlinked. One object at a time in memory.
    private func copyLargeObjects(source: Connection, target: Connection) async throws -> Int {
        let sourceOIDs = try await source.query("SELECT oid::text FROM pg_largeobject_metadata ORDER BY oid").rows.compactMap { $0[0] }
        let targetOIDs = Set(try await target.query("SELECT oid::text FROM pg_largeobject_metadata").rows.compactMap { $0[0] })
        for oid in sourceOIDs {
            let data = try await source.scalar("SELECT lo_get($1::oid)", [oid]) ?? "\\x"
            if targetOIDs.contains(oid) {
                try await target.execute("BEGIN")
                // INV_WRITE = 0x20000; the descriptor lives until COMMIT.
                try await target.query("SELECT lo_truncate(lo_open($1::oid, 131072), 0)", [oid])
                try await target.query("SELECT lo_put($1::oid, 0, $2::bytea)", [oid, data])
                try await target.execute("COMMIT")
            } else {
                try await target.query("SELECT lo_from_bytea($1::oid, $2::bytea)", [oid, data])
            }
        }
        for oid in targetOIDs.subtracting(sourceOIDs) {
            try await target.query("SELECT lo_unlink($1::oid)", [oid])
        }
        return sourceOIDs.count
    }
}
