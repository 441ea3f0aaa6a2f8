import Foundation
import PostgresClient

/// What a resumed copy skips and what it redoes, from the interrupted run's record.
extension NativeCopy {
    /// What a resumed copy still has to do. Committed parts are skipped (and
    /// said so). A part that was started may have committed unrecorded: a whole
    /// table is truncated in its load anyway, a key range is deleted first
    /// (`clearing`), and a table split by blocks is emptied and copied again
    /// in full, because block ranges of two snapshots cannot be mixed. An
    /// unlogged table is always copied again in full: a crash of the target
    /// since (crash recovery empties unlogged tables) leaves no trace in our record.
    func remainingWork(_ parts: [CopyPart]) async throws -> (work: [CopyPart], finished: [CatalogTable], clearing: Set<String>) {
        let recorded = store.parts
        var work: [CopyPart] = []
        var finished: [CatalogTable] = []
        var clearing: Set<String> = []
        var emptied: [CatalogTable] = []
        for (table, tableParts) in Dictionary(grouping: parts, by: \.table).sorted(by: { $0.key.name.description < $1.key.name.description }
        ) {
            let pending = tableParts.filter { recorded[$0.key] != true }
            if report.tables.unlogged.contains(table.name) {
                events.info(
                    .restore,
                    "copying unlogged table \(table.name) again in full: a crash of the target empties unlogged tables, "
                        + "so a resumed copy never trusts them", ["table": .string(table.name.description)])
                emptied.append(table)
                work += tableParts
            } else if pending.isEmpty {
                finished.append(table)
                events.info(
                    .restore, "skipped \(table.name): copied by the interrupted run",
                    ["table": .string(table.name.description), "skipped": .bool(true)])
            } else if tableParts.contains(where: \.isBlockRange) {
                emptied.append(table)
                work += tableParts
            } else {
                work += pending
                clearing.formUnion(pending.filter { recorded[$0.key] == false }.map(\.key))
            }
        }
        if !emptied.isEmpty {
            try await self.target.withConnection(label: "resume", stage: .restore) { target in
                for table in emptied {
                    if !report.tables.unlogged.contains(table.name) {
                        events.info(
                            .restore, "copying \(table.name) again in full: it is split by blocks, which cannot be resumed part by part")
                    }
                    try await LockWait(server: self.target, events: events, stage: .restore, timeout: config.lockTimeout)
                        .watching("emptying \(table.name) on the target to copy it again", session: target) {
                            try await target.execute("TRUNCATE ONLY \(table.name)")
                        }
                }
                let keys = Set(emptied.flatMap { table in parts.filter { $0.table == table }.map(\.key) })
                for key in keys { try store.record(.reset, part: key) }
                // Crash recovery also resets unlogged sequences (an unlogged table's identity, PostgreSQL 15+):
                // they are set from the source again, like the rows.
                if emptied.contains(where: { report.tables.unlogged.contains($0.name) }) {
                    let unlogged = Set(
                        try await target.query(
                            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                + "WHERE c.relkind = 'S' AND c.relpersistence = 'u'"
                        ).rows.map { QualifiedName(schema: $0[0]!, name: $0[1]!) })
                    let sequences = report.tables.sequences.filter(unlogged.contains)
                    if !sequences.isEmpty {
                        let sourceSession = try await source.connect(label: "resume", stage: .restore)
                        let result = try await SequenceSync(sequences: sequences).run(source: sourceSession, target: target)
                        await sourceSession.close()
                        if let failure = result.failures.first {
                            throw MigrationError(.restore, "cannot set the unlogged sequence \(failure.key) again: \(failure.value)")
                        }
                    }
                }
            }
        }
        return (CopyPlan.ordered(work), finished, clearing)
    }

    /// The builds whose index or constraint the interrupted run has not made yet.
    func unbuilt(_ builds: [IndexBuild]) async throws -> [IndexBuild] {
        return try await self.target.withConnection(label: "resume", stage: .restore) { target in
            let existing = Set(
                try await target.query(
                    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'i'"
                ).rows.map { QualifiedName(schema: $0[0]!, name: $0[1]!) })
            return builds.filter { build in
                guard existing.contains(QualifiedName(schema: build.table.schema, name: build.name)) else { return true }
                events.info(.restore, "skipped \(SQL.identifier(build.name)) on \(build.table): built by the interrupted run")
                return false
            }
        }
    }
}
