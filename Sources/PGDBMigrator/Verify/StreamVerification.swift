import PostgresClient
import Synchronization

/// Offline verification that rides along with the native copy.
///
/// Every row already passes through this process on its way to the target,
/// so each copy part's source stream is digested as it is copied
/// (``CopyStreamDigest``): the source is read once. When a table's last part
/// is committed, the target's copy of it is read back in the same COPY format
/// and digested the same way, while the other tables are still copying. Verify
/// then compares the two digests and leaves only the rest to the servers
/// (``Verifier``): tables a resumed run copied partly under an earlier snapshot,
/// tables pg_dump carried, and any table whose digests differ, which the
/// in-server comparison examines again range by range.
final class StreamVerification: Sendable {
    struct TableResult: Sendable {
        var source: TableDigest
        var target: TableDigest
        var matches: Bool { source == target }
    }

    /// How a table's copy is digested as it passes.
    enum Method: Sendable, Equatable {
        /// Its rows' bytes; the target's copy is read back and digested the same way.
        case rows
        /// PostgreSQL's hash of its values (a binary copy of one of ``Verifier/valueHashKinds(_:source:targetVersion:)``'s
        /// tables); the target sums the same hash in its server, nothing read back.
        case values([PostgresHash.Kind])
    }

    private struct State {
        var sources: [QualifiedName: TableDigest] = [:]
        var results: [QualifiedName: TableResult] = [:]
    }

    private let state = Mutex(State())

    /// Adds one copied part's source digest to its table's.
    func add(_ digest: TableDigest, of table: QualifiedName) {
        state.withLock {
            // Parts digested two ways (never the case) add up to a digest no target matches: the servers compare.
            $0.sources[table] = $0.sources[table].map { $0 + digest ?? .rows(RowDigest(rows: -1)) } ?? digest
        }
    }

    /// Takes `table`'s digest on the target the way its source's was taken: its rows read back in the COPY
    /// format its parts were copied in, or PostgreSQL's row hashes summed in the target server.
    func readBack(_ table: CatalogTable, binary: Bool, on target: Connection) async throws {
        let source = state.withLock { $0.sources[table.name] } ?? .rows(RowDigest())
        let targetDigest: TableDigest
        if case .values = source {
            let row = try await target.query(Verifier.rowSumSQL(table)).rows[0]
            targetDigest = .values(PostgresRowSum(rows: Int(row[0] ?? "") ?? -1, sum: Int128(row[1] ?? "") ?? 0))
        } else {
            targetDigest = try await Self.digest(of: table, binary: binary, on: target)
        }
        state.withLock { $0.results[table.name] = TableResult(source: source, target: targetDigest) }
    }

    /// Reads `table` whole with `COPY … TO STDOUT` on `session` and digests it.
    static func digest(of table: CatalogTable, binary: Bool, on session: Connection) async throws -> TableDigest {
        try await session.beginCopyOut("COPY \(table.copyTarget) TO STDOUT" + (binary ? " WITH (FORMAT binary)" : ""))
        var digest = CopyStreamDigest(binary: binary)
        while let batch = try await session.readCopyBatch(minimumBytes: 512 * 1024) {
            try digest.consume(batch)
        }
        return try digest.finished()
    }

    /// The tables read back, and how each compared.
    var results: [QualifiedName: TableResult] { state.withLock { $0.results } }
}
