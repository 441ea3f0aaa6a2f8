import Foundation
import Testing

@testable import PGDBMigrator

@Suite struct StreamDigestTests {
    /// Digests `stream` fed in pieces cut at `cuts`.
    static func digest(_ stream: [UInt8], binary: Bool, cuts: [Int]) throws -> RowDigest {
        guard case .rows(let rows) = try digest(stream, cuts: cuts, into: CopyStreamDigest(binary: binary)) else {
            throw CopyStreamDigest.Malformed(description: "not a row digest")
        }
        return rows
    }

    static func digest(_ stream: [UInt8], cuts: [Int], into digest: CopyStreamDigest) throws -> TableDigest {
        var digest = digest
        var start = 0
        for cut in cuts.sorted() + [stream.count] where cut >= start {
            try digest.consume(Array(stream[start..<cut]))
            start = cut
        }
        return try digest.finished()
    }

    static func text(_ rows: [String]) -> [UInt8] { Array(rows.map { $0 + "\n" }.joined().utf8) }

    /// A binary COPY stream: header (with a 3-byte extension), tuples of fields (nil: NULL), trailer.
    static func binary(_ tuples: [[[UInt8]?]]) -> [UInt8] {
        func int16(_ value: Int) -> [UInt8] { [UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value)] }
        func int32(_ value: Int) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * $0)) } }
        var bytes = Array("PGCOPY\n".utf8) + [0xFF, 0x0D, 0x0A, 0x00] + int32(0) + int32(3) + [1, 2, 3]
        for tuple in tuples {
            bytes += int16(tuple.count)
            for field in tuple { bytes += field.map { int32($0.count) + $0 } ?? int32(-1) }
        }
        return bytes + int16(-1)
    }

    static let rows = ["1\talpha\t\\N", "2\tbeta\t2024-01-01", "3\t" + String(repeating: "long value ", count: 40) + "\tx", "4\t\t"]

    @Test("text: the same rows in any order, cut anywhere, digest alike")
    func textOrderAndCuts() throws {
        let whole = try Self.digest(Self.text(Self.rows), binary: false, cuts: [])
        #expect(whole.rows == 4)
        let reordered = Self.text(Self.rows.reversed())
        for cut in 0...reordered.count {
            #expect(try Self.digest(reordered, binary: false, cuts: [cut]) == whole, "cut at \(cut)")
        }
        #expect(try Self.digest(reordered, binary: false, cuts: Array(0...reordered.count)) == whole, "a byte at a time")
    }

    @Test("text: a changed byte, a lost row, a row twice instead of another, a row split in two all differ")
    func textDifferences() throws {
        let whole = try Self.digest(Self.text(Self.rows), binary: false, cuts: [])
        var changed = Self.rows
        changed[1] = "2\tbetb\t2024-01-01"
        let cases = [
            changed, Array(Self.rows.dropLast()), [Self.rows[0], Self.rows[0], Self.rows[2], Self.rows[3]],
            ["1\talpha", "\t\\N"] + Self.rows.dropFirst(),
        ]
        for rows in cases {
            #expect(try Self.digest(Self.text(rows), binary: false, cuts: []) != whole, "\(rows)")
        }
        // The rows' order inside a row matters (a swapped pair of values is a different row).
        #expect(
            try Self.digest(Self.text(["alpha\t1"]), binary: false, cuts: [])
                != Self.digest(Self.text(["1\talpha"]), binary: false, cuts: []))
        #expect(throws: CopyStreamDigest.Malformed.self) { try Self.digest(Array("1\tno newline".utf8), binary: false, cuts: []) }
    }

    @Test("binary: tuples in any order, cut anywhere (inside a count, a length, a value), digest alike; a changed value differs")
    func binaryStreams() throws {
        let tuples: [[[UInt8]?]] = [
            [[0, 0, 0, 1], Array("alpha".utf8), nil], [[0, 0, 0, 2], [], Array(repeating: 7, count: 300)], [], [[0, 0, 0, 3], nil, nil],
        ]
        let whole = try Self.digest(Self.binary(tuples), binary: true, cuts: [])
        #expect(whole.rows == 4)
        let reordered = Self.binary(tuples.reversed())
        for cut in 0...reordered.count {
            #expect(try Self.digest(reordered, binary: true, cuts: [cut, cut / 2]) == whole, "cut at \(cut)")
        }
        var changed = tuples
        changed[0][1] = Array("alphb".utf8)
        #expect(try Self.digest(Self.binary(changed), binary: true, cuts: []) != whole)
        var nulled = tuples
        nulled[1][1] = nil  // an empty value and NULL are different values
        #expect(try Self.digest(Self.binary(nulled), binary: true, cuts: []) != whole)
        let truncated = Array(Self.binary(tuples).dropLast(2))
        #expect(throws: CopyStreamDigest.Malformed.self) { try Self.digest(truncated, binary: true, cuts: []) }
        #expect(throws: CopyStreamDigest.Malformed.self) {
            try Self.digest(Array("PGCOPX\n".utf8) + Array(repeating: 0, count: 20), binary: true, cuts: [])
        }
    }

    @Test("the row hash spreads: 200k distinct short rows give 200k distinct hashes, and part digests add up to the table's")
    func hashSpread() throws {
        var seen = Set<[UInt64]>()
        var total = RowDigest()
        var halves = (RowDigest(), RowDigest())
        for value in 0..<200_000 {
            var hasher = RowHasher()
            let row = Array("\(value)\tv".utf8)
            row.withUnsafeBytes { hasher.feed($0) }
            let hash = hasher.finish()
            seen.insert([hash.0, hash.1])
            total.add(hash)
            if value % 2 == 0 { halves.0.add(hash) } else { halves.1.add(hash) }
        }
        #expect(seen.count == 200_000)
        #expect(halves.0 + halves.1 == total)
    }

    /// Values as PostgreSQL 15 hashes them (`SELECT hashint4extended(1, 0)`, … on a server).
    @Test("PostgreSQL's value hashes: integers, bool, bytes of every tail length, a row with a NULL")
    func postgresHashes() {
        func bytes(_ text: String) -> Int64 {
            var hash = PostgresHash.Bytes(length: text.utf8.count)
            Array(text.utf8).withUnsafeBytes { hash.feed($0) }
            return Int64(bitPattern: hash.finished())
        }
        #expect(Int64(bitPattern: PostgresHash.uint32(1)) == -3_670_598_878_359_251_130)
        #expect(Int64(bitPattern: PostgresHash.uint32(UInt32(bitPattern: -1))) == -1_888_257_769_727_981_238)
        #expect(Int64(bitPattern: PostgresHash.fixed(.int64, UInt64(bitPattern: -5))) == -9_082_176_226_831_438_310)
        #expect(Int64(bitPattern: PostgresHash.fixed(.int64, UInt64(Int64.max))) == 1_977_219_185_673_256_887)
        #expect(Int64(bitPattern: PostgresHash.fixed(.int16, UInt64(UInt16(bitPattern: -2)))) == 495_194_309_054_116_481)
        #expect(Int64(bitPattern: PostgresHash.fixed(.bool, 1)) == -3_670_598_878_359_251_130)
        #expect(bytes("") == -6_939_563_903_564_495_251)
        #expect(bytes("abcdefghijkl") == -7_556_637_188_122_330_412)
        #expect(bytes("Zürich, 13 bytes+") == 1_197_447_354_731_269_414)
        let row = PostgresHash.fold(PostgresHash.fold(PostgresHash.fold(0, PostgresHash.uint32(1)), 0), PostgresHash.fixed(.bool, 1))
        #expect(Int64(bitPattern: row) == -7_788_002_903_075_228_404)
        // Fed in pieces, the same hash.
        let text = Array("a value long enough for three blocks of twelve, and a tail".utf8)
        var whole = PostgresHash.Bytes(length: text.count)
        text.withUnsafeBytes { whole.feed($0) }
        for cut in 0...text.count {
            var pieces = PostgresHash.Bytes(length: text.count)
            text[..<cut].withUnsafeBytes { pieces.feed($0) }
            text[cut...].withUnsafeBytes { pieces.feed($0) }
            #expect(pieces.finished() == whole.finished(), "cut at \(cut)")
        }
    }

    @Test("two rows that swap a column's values change the sum, also where hash_record_extended's linear fold would not")
    func swappedValues() throws {
        let kinds: [PostgresHash.Kind] = [.int32, .int32]
        func int(_ value: Int32) -> [UInt8]? { withUnsafeBytes(of: value.bigEndian, Array.init) }
        func folded(_ id: Int32, _ value: Int32) -> Int128 {
            let columns = [id, value].map { PostgresHash.fixed(.int32, UInt64(UInt32(bitPattern: $0))) }
            return Int128(Int64(bitPattern: columns.reduce(0, PostgresHash.fold)))
        }
        // (1, x), (2, y) against (1, y), (2, x): the folds' sums differ by a multiple of 2^64, for about half of all
        // pairs by nothing. The first such pair.
        let pairs = (1...50).lazy.flatMap { x in ((x + 1)...51).lazy.map { (Int32(x), Int32($0)) } }
        let (x, y) = try #require(pairs.first { x, y in folded(1, x) + folded(2, y) == folded(1, y) + folded(2, x) })
        let original = try Self.digest(
            Self.binary([[int(1), int(x)], [int(2), int(y)]]), cuts: [], into: CopyStreamDigest(hashingValuesOf: kinds))
        let swapped = try Self.digest(
            Self.binary([[int(1), int(y)], [int(2), int(x)]]), cuts: [], into: CopyStreamDigest(hashingValuesOf: kinds))
        #expect(swapped.rowCount == 2)
        #expect(swapped != original, "rows (1, \(x)), (2, \(y)) swapped their values unseen")
    }

    @Test("binary values summed as the server hashes them: in any order, cut anywhere, alike; a changed value differs")
    func valueSums() throws {
        let kinds: [PostgresHash.Kind] = [.int32, .bytes, .bool, .int64]
        func row(_ id: Int32, _ text: String?, _ flag: Bool?, _ big: Int64) -> [[UInt8]?] {
            [
                withUnsafeBytes(of: id.bigEndian, Array.init), text.map { Array($0.utf8) }, flag.map { [$0 ? 1 : 0] },
                withUnsafeBytes(of: big.bigEndian, Array.init),
            ]
        }
        let rows = [
            row(1, "one", true, -5), row(2, nil, nil, .max), row(3, "", false, 0), row(4, String(repeating: "x", count: 40), true, 7),
        ]
        let whole = try Self.digest(Self.binary(rows), cuts: [], into: CopyStreamDigest(hashingValuesOf: kinds))
        #expect(whole.rowCount == 4)
        let reordered = Self.binary(rows.reversed())
        for cut in 0...reordered.count {
            #expect(try Self.digest(reordered, cuts: [cut], into: CopyStreamDigest(hashingValuesOf: kinds)) == whole, "cut at \(cut)")
        }
        var changed = rows
        changed[2] = row(3, " ", false, 0)
        #expect(try Self.digest(Self.binary(changed), cuts: [], into: CopyStreamDigest(hashingValuesOf: kinds)) != whole)
        #expect(throws: CopyStreamDigest.Malformed.self) {
            try Self.digest(Self.binary(rows), cuts: [], into: CopyStreamDigest(hashingValuesOf: [.int32, .bytes, .bool]))
        }
    }
}
