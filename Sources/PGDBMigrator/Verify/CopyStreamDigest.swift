import Foundation

/// Digests a `COPY … TO STDOUT` stream row by row, as it passes: batches cut
/// rows anywhere, so the state between them is a half-hashed row (and, in
/// binary, where in the tuple the cut fell). Memory is constant whatever the
/// row or table size.
///
/// Text format: a row is everything up to its newline (a newline inside a
/// value is escaped as `\n`). Binary format: after the header, a tuple is a
/// 16-bit field count, then per field a 32-bit length (-1 for NULL) and that
/// many bytes; a count of -1 ends the data. The tuple's bytes, counts and
/// lengths included, are hashed; or, given the columns' kinds, each value is
/// hashed as PostgreSQL hashes it (``PostgresHash``) and the rows summed as
/// the servers sum ``PostgresHash/rowSQL(_:)`` (``rowSum``).
struct CopyStreamDigest {
    let binary: Bool
    private(set) var digest = RowDigest()
    private var hasher = RowHasher()
    /// Binary only: the columns' kinds, when values are hashed as the server does.
    private let kinds: [PostgresHash.Kind]?
    private(set) var rowSum = PostgresRowSum()
    private var rowHash: UInt64 = 0
    private var column = 0
    private var value = ValueHash.none

    private enum ValueHash {
        case none
        case bytes(PostgresHash.Bytes)
        /// A fixed-width value's bytes so far, big-endian.
        case fixed(UInt64)
        /// A char(n) value, gathered in ``padded`` (its trailing blanks are known at its end).
        case blankPadded
    }

    private var padded: [UInt8] = []
    /// Text: bytes of the current row seen (a row cut by a batch boundary).
    private var inRow = false
    private var binaryState = BinaryState.header
    /// The header, cut by a batch boundary.
    private var scratch: [UInt8] = []
    /// A field count or length cut by a batch boundary: its bytes so far, and how many.
    private var partial: UInt64 = 0
    private var partialCount = 0

    private enum BinaryState {
        /// The 11-byte signature, the flags and the header extension's length.
        case header
        /// The header extension's bytes, skipped.
        case headerExtension(remaining: Int)
        case fieldCount
        case fieldLength(fieldsLeft: Int)
        case fieldData(remaining: Int, fieldsLeft: Int)
        /// After the trailer: nothing more may come.
        case end
    }

    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    init(binary: Bool) {
        self.binary = binary
        kinds = nil
    }

    /// Hashes a binary stream's values as PostgreSQL does, each column by its kind.
    init(hashingValuesOf kinds: [PostgresHash.Kind]) {
        binary = true
        self.kinds = kinds
    }

    mutating func consume(_ batch: [UInt8]) throws {
        try batch.withUnsafeBytes { bytes in
            if binary { try consumeBinary(bytes) } else { consumeText(bytes) }
        }
    }

    /// The digest of the whole stream; throws if it ended inside a row.
    func finished() throws -> TableDigest {
        if binary {
            guard case .end = binaryState else { throw Malformed(description: "a binary COPY stream ended without its trailer") }
        } else if inRow {
            throw Malformed(description: "a text COPY stream ended inside a row")
        }
        return kinds == nil ? .rows(digest) : .values(rowSum)
    }

    private mutating func consumeText(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress else { return }
        var start = 0
        while start < bytes.count {
            let rest = bytes.count - start
            guard let found = memchr(base + start, 0x0A, rest) else {
                hasher.feed(UnsafeRawBufferPointer(start: base + start, count: rest))
                inRow = true
                return
            }
            let end = base.distance(to: UnsafeRawPointer(found))
            hasher.feed(UnsafeRawBufferPointer(start: base + start, count: end - start))
            digest.add(hasher.finish())
            inRow = false
            start = end + 1
        }
    }

    private mutating func consumeBinary(_ bytes: UnsafeRawBufferPointer) throws {
        var index = 0
        while index < bytes.count {
            switch binaryState {
            case .header:
                guard let header = gather(19, from: bytes, at: &index) else { return }
                guard header.prefix(11).elementsEqual(Self.signature) else {
                    throw Malformed(description: "a binary COPY stream without PostgreSQL's signature")
                }
                let extensionLength = Int(Self.int32(header, at: 15))
                binaryState = extensionLength > 0 ? .headerExtension(remaining: extensionLength) : .fieldCount
            case .headerExtension(let remaining):
                let skipped = min(remaining, bytes.count - index)
                index += skipped
                binaryState = remaining == skipped ? .fieldCount : .headerExtension(remaining: remaining - skipped)
            case .fieldCount:
                guard let count = number(2, from: bytes, at: &index) else { return }
                let fields = Int(Int16(truncatingIfNeeded: count))
                if fields == -1 {
                    binaryState = .end
                    continue
                }
                if let kinds {
                    guard fields == kinds.count else {
                        throw Malformed(description: "a binary COPY row of \(fields) field(s) where \(kinds.count) were expected")
                    }
                    (rowHash, column) = (0, 0)
                } else {
                    withUnsafeBytes(of: UInt16(truncatingIfNeeded: count).bigEndian) { hasher.feed($0) }
                }
                binaryState = .fieldLength(fieldsLeft: fields)
                if fields == 0 { endTuple() }
            case .fieldLength(let fieldsLeft):
                guard let lengthBits = number(4, from: bytes, at: &index) else { return }
                let length = Int(Int32(truncatingIfNeeded: lengthBits))
                if let kinds {
                    try startValue(kinds[column], length: length)
                } else {
                    withUnsafeBytes(of: UInt32(truncatingIfNeeded: lengthBits).bigEndian) { hasher.feed($0) }
                }
                if length > 0 {
                    binaryState = .fieldData(remaining: length, fieldsLeft: fieldsLeft)
                } else {
                    fieldDone(fieldsLeft: fieldsLeft)
                }
            case .fieldData(let remaining, let fieldsLeft):
                let taken = min(remaining, bytes.count - index)
                let piece = UnsafeRawBufferPointer(rebasing: bytes[index..<(index + taken)])
                switch value {
                case .none: hasher.feed(piece)
                case .bytes(var hash):
                    value = .none  // no copy of the state while it is fed
                    hash.feed(piece)
                    value = .bytes(hash)
                case .fixed(let sofar): value = .fixed(piece.reduce(sofar) { $0 << 8 | UInt64($1) })
                case .blankPadded: padded.append(contentsOf: piece)
                }
                index += taken
                if taken == remaining {
                    fieldDone(fieldsLeft: fieldsLeft)
                } else {
                    binaryState = .fieldData(remaining: remaining - taken, fieldsLeft: fieldsLeft)
                }
            case .end:
                throw Malformed(description: "bytes after the end of a binary COPY stream")
            }
        }
    }

    /// A value of `length` bytes (-1: NULL) begins in the column ``column``.
    private mutating func startValue(_ kind: PostgresHash.Kind, length: Int) throws {
        if length < 0 {
            value = .none
        } else if let width = kind.width {
            guard length == width else {
                throw Malformed(description: "a binary COPY value of \(length) byte(s) where \(width) were expected")
            }
            value = .fixed(0)
        } else if kind == .blankPadded {
            padded.removeAll(keepingCapacity: true)
            value = .blankPadded
        } else {
            value = .bytes(PostgresHash.Bytes(length: length))
        }
    }

    private mutating func fieldDone(fieldsLeft: Int) {
        if let kinds {
            let hash: UInt64
            switch value {
            case .none: hash = 0  // NULL
            case .bytes(let bytes): hash = bytes.finished()
            case .fixed(let bits): hash = PostgresHash.fixed(kinds[column], bits)
            case .blankPadded:
                let length = (padded.lastIndex { $0 != UInt8(ascii: " ") } ?? -1) + 1
                hash = padded.withUnsafeBytes { PostgresHash.bytes(UnsafeRawBufferPointer(rebasing: $0[..<length])) }
            }
            rowHash = PostgresHash.fold(rowHash, hash)
            value = .none
            column += 1
        }
        if fieldsLeft > 1 {
            binaryState = .fieldLength(fieldsLeft: fieldsLeft - 1)
        } else {
            endTuple()
        }
    }

    private mutating func endTuple() {
        if kinds == nil { digest.add(hasher.finish()) } else { rowSum.add(PostgresHash.row(rowHash)) }
        binaryState = .fieldCount
    }

    /// `count` (at most 8) bytes from `index` on as a big-endian number, completing what an earlier batch
    /// began; nil (and the bytes kept) when this batch ends first. No array per number: there are a few per row.
    private mutating func number(_ count: Int, from bytes: UnsafeRawBufferPointer, at index: inout Int) -> UInt64? {
        if partialCount == 0, bytes.count - index >= count {
            var value: UInt64 = 0
            for offset in index..<(index + count) { value = value << 8 | UInt64(bytes[offset]) }
            index += count
            return value
        }
        while partialCount < count, index < bytes.count {
            partial = partial << 8 | UInt64(bytes[index])
            partialCount += 1
            index += 1
        }
        guard partialCount == count else { return nil }
        defer { (partial, partialCount) = (0, 0) }
        return partial
    }

    /// `count` bytes from `index` on, completing what an earlier batch began;
    /// nil (and the bytes kept) when this batch ends first.
    private mutating func gather(_ count: Int, from bytes: UnsafeRawBufferPointer, at index: inout Int) -> [UInt8]? {
        let taken = min(count - scratch.count, bytes.count - index)
        scratch += bytes[index..<(index + taken)]
        index += taken
        guard scratch.count == count else { return nil }
        defer { scratch.removeAll(keepingCapacity: true) }
        return scratch
    }

    private static let signature: [UInt8] = Array("PGCOPY\n".utf8) + [0xFF, 0x0D, 0x0A, 0x00]

    private static func int32(_ bytes: [UInt8], at offset: Int) -> Int32 {
        Int32(bitPattern: bytes[offset..<(offset + 4)].reduce(0) { $0 << 8 | UInt32($1) })
    }
}
