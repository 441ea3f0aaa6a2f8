import CLibPQ
import Foundation

/// One message of the streaming replication protocol, server to client
/// (the payload of a CopyData message on a `replication=database` connection
/// after `START_REPLICATION`).
public enum ReplicationMessage: Sendable, Equatable {
    /// `w`: a piece of the stream. For logical replication `data` is one output
    /// plugin message; `start` and `end` are equal, or zero for messages that
    /// stand for no WAL position of their own (pgoutput's Relation and Type).
    case data(start: LSN, end: LSN, data: [UInt8])
    /// `k`: the server's position; `replyRequested` asks for a status update at
    /// once (the server drops a client that stays silent for `wal_sender_timeout`).
    case keepalive(end: LSN, replyRequested: Bool)
}

/// Replication connections: `START_REPLICATION` and the CopyBoth stream that follows.
extension Connection {
    /// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
    static let postgresEpochOffset: Int64 = 946_684_800_000_000

    /// Runs `START_REPLICATION …` on a connection opened with `replication=database`.
    public func startReplication(_ command: String) throws {
        let conn = try live()
        let result = try resultOrError { PQexec(conn, command) }
        defer { PQclear(result) }
        try check(result, expecting: [PGRES_COPY_BOTH])
        copyOutEnded = false
    }

    /// The messages that have arrived, at most `limit` (many per hop onto this
    /// connection's thread: a busy stream brings thousands a second). Waits up to
    /// `timeout` only when none is there; an empty array means none came in time.
    /// Throws when the server ends the stream or the connection breaks.
    public func readReplicationMessages(limit: Int = 512, timeout: Duration) throws -> [ReplicationMessage] {
        let conn = try live()
        var messages: [ReplicationMessage] = []
        var waited = false
        while messages.count < limit {
            var buffer: UnsafeMutablePointer<CChar>?
            let length = PQgetCopyData(conn, &buffer, 1)
            if length > 0, let buffer {
                defer { PQfreemem(buffer) }
                let bytes = UnsafeRawBufferPointer(start: buffer, count: Int(length))
                messages.append(try Self.replicationMessage(bytes))
            } else if length == 0 {
                guard messages.isEmpty, !waited else { break }
                waited = true
                guard try waitForInput(conn, timeout: timeout) else { break }
                if PQconsumeInput(conn) == 0 { throw PostgresError(kind: .client, message: scrub(lastErrorMessage())) }
            } else if length == -1 {
                try finishCommand()
                throw PostgresError(kind: .client, message: "the server ended the replication stream")
            } else {
                throw PostgresError(kind: .client, message: scrub(lastErrorMessage()))
            }
        }
        return messages
    }

    /// Sends a standby status update: `flush` is what the slot may forget (its
    /// `confirmed_flush_lsn` follows it); `write` and `apply` are shown in
    /// `pg_stat_replication`.
    public func sendStandbyStatus(write: LSN, flush: LSN, apply: LSN, replyRequested: Bool = false) throws {
        let conn = try live()
        var message: [UInt8] = [UInt8(ascii: "r")]
        let now = Int64(Date().timeIntervalSince1970 * 1_000_000) - Self.postgresEpochOffset
        for value in [write.value, flush.value, apply.value, UInt64(bitPattern: now)] {
            withUnsafeBytes(of: value.bigEndian) { message.append(contentsOf: $0) }
        }
        message.append(replyRequested ? 1 : 0)
        let sent = message.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { PQputCopyData(conn, $0.baseAddress, Int32($0.count)) }
        }
        if sent != 1 || PQflush(conn) != 0 { throw PostgresError(kind: .client, message: scrub(lastErrorMessage())) }
    }

    static func replicationMessage(_ bytes: UnsafeRawBufferPointer) throws -> ReplicationMessage {
        func int64(at offset: Int) -> UInt64 { UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
        switch bytes.first {
        case UInt8(ascii: "w") where bytes.count >= 25:
            return .data(start: LSN(int64(at: 1)), end: LSN(int64(at: 9)), data: Array(bytes[25...]))
        case UInt8(ascii: "k") where bytes.count >= 18:
            return .keepalive(end: LSN(int64(at: 1)), replyRequested: bytes[17] != 0)
        default:
            throw PostgresError(
                kind: .client, message: "unexpected replication message \(bytes.first.map { String(UnicodeScalar($0)) } ?? "(empty)")")
        }
    }

    /// Waits until the socket has data or `timeout` passes (false).
    func waitForInput(_ conn: OpaquePointer, timeout: Duration) throws -> Bool {
        var descriptor = pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0)
        let milliseconds = Int32(clamping: timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        while true {
            let ready = poll(&descriptor, 1, milliseconds)
            if ready >= 0 { return ready > 0 }
            if errno != EINTR { throw PostgresError(kind: .client, message: "poll failed: \(String(cString: strerror(errno)))") }
        }
    }
}
