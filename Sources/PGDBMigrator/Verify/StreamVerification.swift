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
        var source: RowDigest
        var target: RowDigest
        var matches: Bool { source == target }
    }

    private struct State {
        var sources: [QualifiedName: RowDigest] = [:]
        var results: [QualifiedName: TableResult] = [:]
    }

    private let state = Mutex(State())

    /// Adds one copied part's source digest to its table's.
    func add(_ digest: RowDigest, of table: QualifiedName) {
        state.withLock { $0.sources[table] = ($0.sources[table] ?? RowDigest()) + digest }
    }

    /// Reads `table` back from the target in the COPY format its parts were
    /// copied in and records how it compares with the source's digest.
    func readBack(_ table: CatalogTable, binary: Bool, on target: Connection) async throws {
        let targetDigest = try await Self.digest(of: table, binary: binary, on: target)
        state.withLock {
            $0.results[table.name] = TableResult(source: $0.sources[table.name] ?? RowDigest(), target: targetDigest)
        }
    }

    /// Reads `table` whole with `COPY … TO STDOUT` on `session` and digests it.
    static func digest(of table: CatalogTable, binary: Bool, on session: Connection) async throws -> RowDigest {
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
