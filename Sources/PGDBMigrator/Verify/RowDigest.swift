/// An order-independent fingerprint of a set of rows: their count and the sum
/// (wrapping, lane by lane) of a 128-bit hash of each row's bytes.
///
/// A sum does not care in which order rows arrive — the target's heap order
/// differs from the source's once parts load in parallel — and the digests of a
/// table's parts add up to the table's. Two different row multisets share a
/// digest only if the hashes collide (about 2^-128 for a changed row; a row
/// that appears twice instead of another is caught by the sum, as a count
/// would not).
struct RowDigest: Equatable, Sendable, Codable {
    var rows = 0
    var low: UInt64 = 0
    var high: UInt64 = 0

    mutating func add(_ hash: (UInt64, UInt64)) {
        rows += 1
        low &+= hash.0
        high &+= hash.1
    }

    static func + (left: RowDigest, right: RowDigest) -> RowDigest {
        RowDigest(rows: left.rows + right.rows, low: left.low &+ right.low, high: left.high &+ right.high)
    }
}

/// What a table's rows (or a part's) come to, taken the same way on both sides.
enum TableDigest: Equatable, Sendable {
    /// Each row's bytes hashed here (``RowDigest``): both sides' rows pass through this process.
    case rows(RowDigest)
    /// PostgreSQL's own row hash, summed (``PostgresRowSum``): the target's is taken in its server.
    case values(PostgresRowSum)

    var rowCount: Int {
        switch self {
        case .rows(let digest): digest.rows
        case .values(let sum): sum.rows
        }
    }

    /// The digest of two parts of one table, taken the same way; nil if they were not.
    static func + (left: TableDigest, right: TableDigest) -> TableDigest? {
        switch (left, right) {
        case (.rows(let a), .rows(let b)): .rows(a + b)
        case (.values(let a), .values(let b)): .values(a + b)
        default: nil
        }
    }
}

/// A streaming 128-bit hash of one row's bytes, fed in pieces of any size: four
/// independent 64-bit lanes over 32-byte stripes (one 8-byte word each, a
/// multiply–rotate round: the lanes run side by side in the processor), folded
/// into two 64-bit halves by a multiply–xorshift finish. Not a cryptographic
/// hash: it tells accidental differences apart (a changed byte, a lost row),
/// which is what verify proves.
struct RowHasher {
    private var lanes: (UInt64, UInt64, UInt64, UInt64) = Self.seeds
    /// Bytes not yet forming a whole stripe.
    private var pending: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    private var pendingCount = 0
    private var length = 0

    private static let seeds: (UInt64, UInt64, UInt64, UInt64) = (
        0x243F_6A88_85A3_08D3, 0x1319_8A2E_0370_7344, 0xA409_3822_299F_31D0, 0x082E_FA98_EC4E_6C89
    )
    private static let multiplier: UInt64 = 0x9E37_79B1_85EB_CA87
    private static let adder: UInt64 = 0xC2B2_AE3D_27D4_EB4F

    @inline(__always)
    private static func round(_ lane: UInt64, _ word: UInt64) -> UInt64 {
        (lane &+ word &* adder).rotated(31) &* multiplier
    }

    @inline(__always)
    private mutating func stripe(_ a: UInt64, _ b: UInt64, _ c: UInt64, _ d: UInt64) {
        lanes = (Self.round(lanes.0, a), Self.round(lanes.1, b), Self.round(lanes.2, c), Self.round(lanes.3, d))
    }

    /// Adds `bytes` to the row.
    mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
        var index = 0
        let count = bytes.count
        length += count
        if pendingCount > 0 {
            let taken = min(32 - pendingCount, count)
            withUnsafeMutableBytes(of: &pending) { ($0.baseAddress! + pendingCount).copyMemory(from: base, byteCount: taken) }
            pendingCount += taken
            index = taken
            guard pendingCount == 32 else { return }
            stripe(pending.0, pending.1, pending.2, pending.3)
            pending = (0, 0, 0, 0)
            pendingCount = 0
        }
        while count - index >= 32 {
            stripe(
                UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self)),
                UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: index + 8, as: UInt64.self)),
                UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: index + 16, as: UInt64.self)),
                UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: index + 24, as: UInt64.self)))
            index += 32
        }
        if index < count {
            let rest = count - index
            withUnsafeMutableBytes(of: &pending) { $0.baseAddress!.copyMemory(from: base + index, byteCount: rest) }
            pendingCount = rest
        }
    }

    /// The row's hash; the hasher starts a new row.
    mutating func finish() -> (UInt64, UInt64) {
        // The tail: zero-padded (the length, mixed in below, tells "ab" from "ab\0").
        if pendingCount > 0 {
            stripe(
                UInt64(littleEndian: pending.0), UInt64(littleEndian: pending.1), UInt64(littleEndian: pending.2),
                UInt64(littleEndian: pending.3))
        }
        let size = UInt64(truncatingIfNeeded: length)
        let a = Self.mix(lanes.0 ^ lanes.1.rotated(17) ^ size)
        let b = Self.mix(lanes.2 ^ lanes.3.rotated(29) ^ (size &* Self.multiplier) ^ a)
        self = RowHasher()
        return (Self.mix(a ^ lanes.3), b)
    }

    @inline(__always)
    private static func mix(_ value: UInt64) -> UInt64 {
        var x = value
        x ^= x >> 33
        x &*= 0xFF51_AFD7_ED55_8CCD
        x ^= x >> 33
        x &*= 0xC4CE_B9FE_1A85_EC53
        x ^= x >> 33
        return x
    }
}

extension UInt64 {
    @inline(__always)
    fileprivate func rotated(_ bits: UInt64) -> UInt64 { (self << bits) | (self >> (64 - bits)) }
}
