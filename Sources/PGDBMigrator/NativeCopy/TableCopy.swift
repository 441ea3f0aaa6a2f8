import PostgresClient

/// Streams one copy part from a source session (inside the snapshot) into a
/// target session, with one batch read ahead so both servers work at once.
///
/// A whole table is loaded as `TRUNCATE` + `COPY … FREEZE` in one transaction:
/// rerunning it never duplicates rows, and the rows land already frozen, so the
/// first VACUUM on the target has nothing to rewrite. A part is one
/// transaction of its own: it is there entirely or not at all.
struct TableCopy {
    var source: Connection
    var target: Connection
    /// The tables copied in binary (``NativeCopy/binaryTables(_:sameMajor:hashable:)``): no text formatting on the
    /// source, no parsing on the target. The others travel as text.
    var binaryTables: Set<QualifiedName> = []
    /// Bytes per hop between the servers and this process.
    var batchBytes = 512 * 1024

    struct Result: Sendable {
        var rows: Int
        var bytes: Int
        var binary: Bool
        /// The source rows' digest, when digesting.
        var digest: TableDigest?
    }

    /// Copies `part`; `progress` hears about every batch (bytes). `clearing`
    /// first deletes the part's key range, for a part an interrupted run may
    /// have committed without recording it. `digesting`: the source's rows are
    /// digested as they pass (``CopyStreamDigest``), for verify, that way.
    func run(
        _ part: CopyPart, clearing: Bool = false, digesting: StreamVerification.Method? = nil, progress: @Sendable (Int) -> Void
    ) async throws -> Result {
        try await target.execute("BEGIN")
        do {
            if part.isWholeTable {
                try await target.execute("TRUNCATE ONLY \(part.table.name)")
            } else if clearing, let range = part.range {
                try await target.execute("DELETE FROM ONLY \(part.table.name) WHERE \(range.condition)")
            }
            let binary = binaryTables.contains(part.table.name)
            try await source.beginCopyOut(part.copyOutSQL + (binary ? " WITH (FORMAT binary)" : ""))
            let options = (binary ? ["FORMAT binary"] : []) + (part.isWholeTable ? ["FREEZE"] : [])
            try await target.beginCopyIn(
                "COPY \(part.table.copyTarget) FROM STDIN" + (options.isEmpty ? "" : " WITH (\(options.joined(separator: ", ")))"))
            var bytes = 0
            var digest: CopyStreamDigest?
            switch digesting {
            case .values(let kinds)? where binary: digest = CopyStreamDigest(hashingValuesOf: kinds)
            case _?: digest = CopyStreamDigest(binary: binary)
            case nil: digest = nil
            }
            do {
                var ahead = Task { [source, batchBytes] in try await source.readCopyBatch(minimumBytes: batchBytes) }
                while let batch = try await ahead.value {
                    ahead = Task { [source, batchBytes] in try await source.readCopyBatch(minimumBytes: batchBytes) }
                    try Task.checkCancellation()
                    // Digested while the target takes the batch.
                    async let written: Void = target.writeCopyData(batch)
                    try digest?.consume(batch)
                    try await written
                    bytes += batch.count
                    progress(batch.count)
                }
            } catch {
                // Abort the half-sent COPY so the target session is usable (and rolls back).
                _ = try? await target.endCopyIn(failure: "pg_dbmigrator: the source side failed")
                throw error
            }
            let rows = try await target.endCopyIn()
            try await target.execute("COMMIT")
            return Result(rows: rows, bytes: bytes, binary: binary, digest: try digest?.finished())
        } catch {
            _ = try? await target.execute("ROLLBACK")
            throw error
        }
    }
}
