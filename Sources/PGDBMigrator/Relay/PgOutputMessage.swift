import PostgresClient

/// One message of PostgreSQL's `pgoutput` logical decoding plugin: the
/// payload of each piece of a logical replication stream. Field layouts follow
/// the protocol's "Logical Replication Message Formats"; protocol versions 1–4
/// share them, except that inside a streamed transaction (between Stream Start
/// and Stream Stop) the data messages carry the (sub)transaction's xid first.
enum PgOutputMessage: Equatable, Sendable {
    /// A transaction starts; `finalLSN` is its commit record's.
    case begin(finalLSN: LSN, commitTime: Int64, xid: UInt32)
    /// It commits; `endLSN` (past the commit record) is the position to resume after.
    case commit(commitLSN: LSN, endLSN: LSN, commitTime: Int64)
    /// The transaction came from another node's replication origin.
    case origin(lsn: LSN, name: String)
    /// A relation's shape: sent before its first change and after every change to it.
    case relation(Relation)
    /// A user-defined type a relation's column uses (for information only).
    case type(oid: UInt32, namespace: String, name: String)
    case insert(xid: UInt32?, relation: UInt32, new: [TupleValue])
    /// `old` is the old key (`K`: replica identity columns only, others null) or the whole
    /// old row (`O`: replica identity FULL); nil when the key did not change.
    case update(xid: UInt32?, relation: UInt32, old: OldTuple?, new: [TupleValue])
    case delete(xid: UInt32?, relation: UInt32, old: OldTuple)
    case truncate(xid: UInt32?, cascade: Bool, restartIdentity: Bool, relations: [UInt32])
    /// `pg_logical_emit_message`: `lsn` is what that function returned.
    case message(xid: UInt32?, transactional: Bool, lsn: LSN, prefix: String, content: [UInt8])
    /// A block of a large transaction sent before it commits (`streaming`).
    case streamStart(xid: UInt32, firstSegment: Bool)
    case streamStop
    case streamCommit(xid: UInt32, commitLSN: LSN, endLSN: LSN, commitTime: Int64)
    /// `subxid == xid`: the whole transaction aborted; else only that subtransaction.
    case streamAbort(xid: UInt32, subxid: UInt32)

    struct Relation: Equatable, Sendable {
        var oid: UInt32
        var namespace: String
        var name: String
        /// `pg_class.relreplident`: d(efault), n(othing), f(ull), i(ndex).
        var replicaIdentity: UInt8
        var columns: [Column]

        struct Column: Equatable, Sendable {
            var name: String
            var typeOID: UInt32
            var typeModifier: Int32
            /// Part of the replica identity (every column under FULL).
            var isKey: Bool
        }
    }

    enum OldTuple: Equatable, Sendable {
        case key([TupleValue])
        case full([TupleValue])

        var values: [TupleValue] {
            switch self {
            case .key(let values), .full(let values): values
            }
        }
    }

    enum TupleValue: Hashable, Sendable {
        case null
        /// A TOASTed value the change left as it was: not sent, so not to be set.
        case unchanged
        case text([UInt8])
        case binary([UInt8])
    }

    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    /// Inside a stream block: the (sub)transaction a change or message belongs to.
    var streamedXid: UInt32? {
        switch self {
        case .insert(let xid, _, _), .update(let xid, _, _, _), .delete(let xid, _, _), .truncate(let xid, _, _, _),
            .message(let xid, _, _, _, _):
            xid
        default: nil
        }
    }
}

/// Reads `pgoutput` messages, keeping the one piece of state their layout
/// depends on: whether a streamed block is open (its messages carry an xid).
struct PgOutputDecoder {
    private(set) var inStreamBlock: Bool

    /// `inStreamBlock`: the messages are a streamed transaction's, as kept and read back at its commit.
    init(inStreamBlock: Bool = false) { self.inStreamBlock = inStreamBlock }

    mutating func decode(_ bytes: [UInt8]) throws -> PgOutputMessage {
        var reader = ByteReader(bytes)
        let kind = try reader.byte()
        let streamed = inStreamBlock
        let xid = { (reader: inout ByteReader) throws -> UInt32? in try streamed ? reader.uint32() : nil }
        let message: PgOutputMessage
        switch kind {
        case UInt8(ascii: "B"):
            message = .begin(finalLSN: LSN(try reader.uint64()), commitTime: try reader.int64(), xid: try reader.uint32())
        case UInt8(ascii: "C"):
            _ = try reader.byte()
            message = .commit(commitLSN: LSN(try reader.uint64()), endLSN: LSN(try reader.uint64()), commitTime: try reader.int64())
        case UInt8(ascii: "O"):
            message = .origin(lsn: LSN(try reader.uint64()), name: try reader.string())
        case UInt8(ascii: "R"):
            _ = try xid(&reader)
            let oid = try reader.uint32()
            let namespace = try reader.string()
            let name = try reader.string()
            let identity = try reader.byte()
            let count = Int(try reader.int16())
            var columns: [PgOutputMessage.Relation.Column] = []
            for _ in 0..<max(0, count) {
                let flags = try reader.byte()
                columns.append(
                    .init(name: try reader.string(), typeOID: try reader.uint32(), typeModifier: try reader.int32(), isKey: flags & 1 != 0))
            }
            message = .relation(.init(oid: oid, namespace: namespace, name: name, replicaIdentity: identity, columns: columns))
        case UInt8(ascii: "Y"):
            _ = try xid(&reader)
            message = .type(oid: try reader.uint32(), namespace: try reader.string(), name: try reader.string())
        case UInt8(ascii: "I"):
            let transaction = try xid(&reader)
            let relation = try reader.uint32()
            try reader.expect("N")
            message = .insert(xid: transaction, relation: relation, new: try reader.tuple())
        case UInt8(ascii: "U"):
            let transaction = try xid(&reader)
            let relation = try reader.uint32()
            var old: PgOutputMessage.OldTuple?
            switch try reader.byte() {
            case UInt8(ascii: "K"):
                old = .key(try reader.tuple())
                try reader.expect("N")
            case UInt8(ascii: "O"):
                old = .full(try reader.tuple())
                try reader.expect("N")
            case UInt8(ascii: "N"):
                break
            case let other:
                throw PgOutputMessage.Malformed(description: "UPDATE with tuple kind \(other)")
            }
            message = .update(xid: transaction, relation: relation, old: old, new: try reader.tuple())
        case UInt8(ascii: "D"):
            let transaction = try xid(&reader)
            let relation = try reader.uint32()
            let old: PgOutputMessage.OldTuple
            switch try reader.byte() {
            case UInt8(ascii: "K"): old = .key(try reader.tuple())
            case UInt8(ascii: "O"): old = .full(try reader.tuple())
            case let other: throw PgOutputMessage.Malformed(description: "DELETE with tuple kind \(other)")
            }
            message = .delete(xid: transaction, relation: relation, old: old)
        case UInt8(ascii: "T"):
            let transaction = try xid(&reader)
            let count = Int(try reader.int32())
            let options = try reader.byte()
            var relations: [UInt32] = []
            for _ in 0..<max(0, count) { relations.append(try reader.uint32()) }
            message = .truncate(xid: transaction, cascade: options & 1 != 0, restartIdentity: options & 2 != 0, relations: relations)
        case UInt8(ascii: "M"):
            let transaction = try xid(&reader)
            let flags = try reader.byte()
            let lsn = LSN(try reader.uint64())
            let prefix = try reader.string()
            let length = Int(try reader.int32())
            message = .message(xid: transaction, transactional: flags & 1 != 0, lsn: lsn, prefix: prefix, content: try reader.bytes(length))
        case UInt8(ascii: "S"):
            message = .streamStart(xid: try reader.uint32(), firstSegment: try reader.byte() == 1)
            inStreamBlock = true
        case UInt8(ascii: "E"):
            message = .streamStop
            inStreamBlock = false
        case UInt8(ascii: "c"):
            let transaction = try reader.uint32()
            _ = try reader.byte()
            message = .streamCommit(
                xid: transaction, commitLSN: LSN(try reader.uint64()), endLSN: LSN(try reader.uint64()), commitTime: try reader.int64())
        case UInt8(ascii: "A"):
            // (With streaming 'parallel', which we never ask for, an abort LSN and time would follow.)
            message = .streamAbort(xid: try reader.uint32(), subxid: try reader.uint32())
        default:
            throw PgOutputMessage.Malformed(description: "unknown pgoutput message '\(String(UnicodeScalar(kind)))'")
        }
        return message
    }
}

/// Big-endian reads over one message, each checked against its end.
private struct ByteReader {
    let bytes: [UInt8]
    var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func bytes(_ count: Int) throws -> [UInt8] {
        guard count >= 0, offset + count <= bytes.count else {
            throw PgOutputMessage.Malformed(description: "a pgoutput message ends early (\(bytes.count) bytes)")
        }
        defer { offset += count }
        return Array(bytes[offset..<(offset + count)])
    }

    mutating func byte() throws -> UInt8 { try bytes(1)[0] }

    mutating func uint64() throws -> UInt64 { try bytes(8).reduce(0) { $0 << 8 | UInt64($1) } }
    mutating func int64() throws -> Int64 { Int64(bitPattern: try uint64()) }
    mutating func uint32() throws -> UInt32 { try bytes(4).reduce(0) { $0 << 8 | UInt32($1) } }
    mutating func int32() throws -> Int32 { Int32(bitPattern: try uint32()) }
    mutating func int16() throws -> Int16 { Int16(bitPattern: try bytes(2).reduce(0) { $0 << 8 | UInt16($1) }) }

    /// A NUL-terminated string.
    mutating func string() throws -> String {
        guard let end = bytes[offset...].firstIndex(of: 0) else {
            throw PgOutputMessage.Malformed(description: "a pgoutput string without its terminator")
        }
        defer { offset = end + 1 }
        return String(decoding: bytes[offset..<end], as: UTF8.self)
    }

    mutating func expect(_ kind: Character) throws {
        let found = try byte()
        guard found == kind.asciiValue else {
            throw PgOutputMessage.Malformed(description: "expected '\(kind)' in a pgoutput message, found \(found)")
        }
    }

    mutating func tuple() throws -> [PgOutputMessage.TupleValue] {
        let count = Int(try int16())
        var values: [PgOutputMessage.TupleValue] = []
        values.reserveCapacity(max(0, count))
        for _ in 0..<max(0, count) {
            switch try byte() {
            case UInt8(ascii: "n"): values.append(.null)
            case UInt8(ascii: "u"): values.append(.unchanged)
            case UInt8(ascii: "t"): values.append(.text(try bytes(Int(try int32()))))
            case UInt8(ascii: "b"): values.append(.binary(try bytes(Int(try int32()))))
            case let other: throw PgOutputMessage.Malformed(description: "unknown tuple value kind \(other)")
            }
        }
        return values
    }
}
