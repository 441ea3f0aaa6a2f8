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
/// lengths included, are hashed.
struct CopyStreamDigest {
    let binary: Bool
    private(set) var digest = RowDigest()
    private var hasher = RowHasher()
    /// Text: bytes of the current row seen (a row cut by a batch boundary).
    private var inRow = false
    private var binaryState = BinaryState.header
    /// A header, field count or length cut by a batch boundary.
    private var scratch: [UInt8] = []

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

    init(binary: Bool) { self.binary = binary }

    mutating func consume(_ batch: [UInt8]) throws {
        try batch.withUnsafeBytes { bytes in
            if binary { try consumeBinary(bytes) } else { consumeText(bytes) }
        }
    }

    /// The digest of the whole stream; throws if it ended inside a row.
    func finished() throws -> RowDigest {
        if binary {
            guard case .end = binaryState else { throw Malformed(description: "a binary COPY stream ended without its trailer") }
        } else if inRow {
            throw Malformed(description: "a text COPY stream ended inside a row")
        }
        return digest
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
                guard let count = gather(2, from: bytes, at: &index) else { return }
                let fields = Int(Int16(bitPattern: UInt16(count[0]) << 8 | UInt16(count[1])))
                if fields == -1 {
                    binaryState = .end
                    continue
                }
                count.withUnsafeBytes { hasher.feed($0) }
                binaryState = .fieldLength(fieldsLeft: fields)
                if fields == 0 { endTuple() }
            case .fieldLength(let fieldsLeft):
                guard let lengthBytes = gather(4, from: bytes, at: &index) else { return }
                lengthBytes.withUnsafeBytes { hasher.feed($0) }
                let length = Int(Self.int32(lengthBytes, at: 0))
                if length > 0 {
                    binaryState = .fieldData(remaining: length, fieldsLeft: fieldsLeft)
                } else {
                    fieldDone(fieldsLeft: fieldsLeft)
                }
            case .fieldData(let remaining, let fieldsLeft):
                let taken = min(remaining, bytes.count - index)
                hasher.feed(UnsafeRawBufferPointer(rebasing: bytes[index..<(index + taken)]))
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

    private mutating func fieldDone(fieldsLeft: Int) {
        if fieldsLeft > 1 {
            binaryState = .fieldLength(fieldsLeft: fieldsLeft - 1)
        } else {
            endTuple()
        }
    }

    private mutating func endTuple() {
        digest.add(hasher.finish())
        binaryState = .fieldCount
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
