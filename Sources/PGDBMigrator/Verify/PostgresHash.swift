/// PostgreSQL's own row hash, `hash_record_extended(row, 0)`, computed here from the values of a binary
/// `COPY` stream, for the column types whose hash is their stored bytes' (``Verifier/valueHashed``): the
/// source's rows are summed as they are copied, and the target sums the same hash of its rows in its server
/// (``Verifier/rowSumSQL(_:)``), so neither side is printed, and the source is read once.
///
/// The hash is Bob Jenkins' lookup3 as PostgreSQL uses it (`hash_bytes_extended` and
/// `hash_bytes_uint32_extended`, little-endian, seed 0); a row's hash folds its columns' as
/// `hash_record_extended` does (`h = 31·h + column`, NULL as 0), then hashes that once more
/// (``row(_:)``). Tests compare it with the server's.
enum PostgresHash {
    /// How a column's binary value is hashed, by its type.
    enum Kind: String, Sendable, Codable {
        /// int2: `hashint2extended`.
        case int16
        /// int4 and date: `hashint4extended`.
        case int32
        /// int8, timestamp and timestamptz: `hashint8extended`.
        case int64
        /// bool: `hashcharextended`.
        case bool
        /// text and varchar (deterministic collations), bytea, uuid: the bytes themselves.
        case bytes
        /// char(n): the bytes without their trailing blanks (`hashbpcharextended`).
        case blankPadded

        /// The size of its binary value, when fixed.
        var width: Int? {
            switch self {
            case .int16: 2
            case .int32: 4
            case .int64: 8
            case .bool: 1
            case .bytes, .blankPadded: nil
            }
        }
    }

    /// `hash_record_extended`'s step from one column to the next.
    @inline(__always)
    static func fold(_ row: UInt64, _ column: UInt64) -> UInt64 { (row << 5) &- row &+ column }

    /// What a row adds to its table's sum: `hashint8extended(hash_record_extended(row, 0), 0)`.
    ///
    /// `hash_record_extended` is linear in its columns' hashes, and so is a sum: two rows that swap a column's
    /// values would change the summed folds by a multiple of 2^64 only, often by nothing. Hashed once more, a
    /// row's share of the sum no longer splits by column.
    @inline(__always)
    static func row(_ folded: UInt64) -> UInt64 { fixed(.int64, folded) }

    /// The SQL of ``row(_:)`` for `row`, a row value: what the servers sum for a table or a part.
    static func rowSQL(_ row: String) -> String { "hashint8extended(hash_record_extended(\(row), 0), 0)" }

    /// The hash of a fixed-width value (`value`: its big-endian binary form, ``Kind/width`` bytes).
    static func fixed(_ kind: Kind, _ value: UInt64) -> UInt64 {
        switch kind {
        case .int16: return uint32(UInt32(bitPattern: Int32(Int16(truncatingIfNeeded: value))))
        case .int32, .bool: return uint32(UInt32(truncatingIfNeeded: value))
        case .int64:
            let signed = Int64(bitPattern: value)
            let high = UInt32(truncatingIfNeeded: value >> 32)
            return uint32(UInt32(truncatingIfNeeded: value) ^ (signed >= 0 ? high : ~high))
        case .bytes, .blankPadded: return 0
        }
    }

    /// `hash_bytes_uint32_extended(k, 0)`.
    static func uint32(_ k: UInt32) -> UInt64 {
        var state = State(length: 4)
        state.a &+= k
        return state.finished()
    }

    /// `hash_bytes_extended` of a whole value.
    static func bytes(_ value: UnsafeRawBufferPointer) -> UInt64 {
        var hash = Bytes(length: value.count)
        hash.feed(value)
        return hash.finished()
    }

    /// lookup3's three words.
    struct State {
        var a: UInt32
        var b: UInt32
        var c: UInt32

        init(length: Int) {
            a = 0x9E37_79B9 &+ UInt32(truncatingIfNeeded: length) &+ 3_923_095
            b = a
            c = a
        }

        @inline(__always)
        mutating func mix() {
            a &-= c; a ^= c.rotated(4); c &+= b
            b &-= a; b ^= a.rotated(6); a &+= c
            c &-= b; c ^= b.rotated(8); b &+= a
            a &-= c; a ^= c.rotated(16); c &+= b
            b &-= a; b ^= a.rotated(19); a &+= c
            c &-= b; c ^= b.rotated(4); b &+= a
        }

        func finished() -> UInt64 {
            var (a, b, c) = (a, b, c)
            c ^= b; c &-= b.rotated(14)
            a ^= c; a &-= c.rotated(11)
            b ^= a; b &-= a.rotated(25)
            c ^= b; c &-= b.rotated(16)
            a ^= c; a &-= c.rotated(4)
            b ^= a; b &-= a.rotated(14)
            c ^= b; c &-= b.rotated(24)
            return UInt64(b) << 32 | UInt64(c)
        }
    }

    /// `hash_bytes_extended(value, length, 0)` over a value that arrives in pieces.
    struct Bytes {
        private var state: State
        /// Bytes of an unfinished 12-byte block, little-endian in a word each.
        private var pending: (UInt32, UInt32, UInt32) = (0, 0, 0)
        private var pendingCount = 0

        init(length: Int) { state = State(length: length) }

        mutating func feed(_ bytes: UnsafeRawBufferPointer) {
            guard let base = bytes.baseAddress else { return }
            let count = bytes.count
            var index = 0
            if pendingCount > 0 {
                while pendingCount < 12, index < count {
                    add(base.load(fromByteOffset: index, as: UInt8.self), at: pendingCount)
                    pendingCount += 1
                    index += 1
                }
                guard pendingCount == 12 else { return }
                block()
            }
            var block = state
            while count - index >= 12 {
                block.a &+= UInt32(littleEndian: base.loadUnaligned(fromByteOffset: index, as: UInt32.self))
                block.b &+= UInt32(littleEndian: base.loadUnaligned(fromByteOffset: index + 4, as: UInt32.self))
                block.c &+= UInt32(littleEndian: base.loadUnaligned(fromByteOffset: index + 8, as: UInt32.self))
                block.mix()
                index += 12
            }
            state = block
            // The rest, under a block, waits for more bytes or the end.
            while index < count {
                add(base.load(fromByteOffset: index, as: UInt8.self), at: pendingCount)
                pendingCount += 1
                index += 1
            }
        }

        /// The hash; the tail's bytes go in as lookup3 adds them (the lowest byte of `c` is left for the length).
        func finished() -> UInt64 {
            var state = state
            state.a &+= pending.0
            state.b &+= pending.1
            state.c &+= pending.2 << 8
            return state.finished()
        }

        @inline(__always)
        private mutating func add(_ byte: UInt8, at position: Int) {
            let shifted = UInt32(byte) << (8 * UInt32(position % 4))
            switch position / 4 {
            case 0: pending.0 |= shifted
            case 1: pending.1 |= shifted
            default: pending.2 |= shifted
            }
        }

        private mutating func block() {
            state.a &+= pending.0
            state.b &+= pending.1
            state.c &+= pending.2
            state.mix()
            pending = (0, 0, 0)
            pendingCount = 0
        }
    }
}

/// What `SELECT count(*), sum(hashint8extended(hash_record_extended(…), 0))` gives for a set of rows: their number and the exact sum
/// of their hashes (signed, as the server's `bigint`). Order-independent, and the sums of a table's parts add up.
struct PostgresRowSum: Equatable, Sendable {
    var rows = 0
    var sum: Int128 = 0

    mutating func add(_ hash: UInt64) {
        rows += 1
        sum += Int128(Int64(bitPattern: hash))
    }

    static func + (left: PostgresRowSum, right: PostgresRowSum) -> PostgresRowSum {
        PostgresRowSum(rows: left.rows + right.rows, sum: left.sum + right.sum)
    }
}

extension UInt32 {
    @inline(__always)
    fileprivate func rotated(_ bits: UInt32) -> UInt32 { (self << bits) | (self >> (32 - bits)) }
}
