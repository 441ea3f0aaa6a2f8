import PostgresClient
import Testing

@testable import PGDBMigrator

@Suite struct PgOutputDecoderTests {
    static func int32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * $0)) } }
    static func insert(xid: UInt32?) -> [UInt8] {
        [UInt8(ascii: "I")] + (xid.map(int32) ?? []) + int32(16_384) + [UInt8(ascii: "N"), 0, 2]
            + [UInt8(ascii: "t")] + int32(1) + [UInt8(ascii: "7")] + [UInt8(ascii: "n")]
    }

    @Test("changes carry an xid only between Stream Start and Stream Stop")
    func streamBlocks() throws {
        var decoder = PgOutputDecoder()
        let plain = PgOutputMessage.insert(xid: nil, relation: 16_384, new: [.text([UInt8(ascii: "7")]), .null])
        #expect(try decoder.decode(Self.insert(xid: nil)) == plain)
        #expect(try decoder.decode([UInt8(ascii: "S")] + Self.int32(900) + [1]) == .streamStart(xid: 900, firstSegment: true))
        #expect(try decoder.decode(Self.insert(xid: 901)) == .insert(xid: 901, relation: 16_384, new: [.text([UInt8(ascii: "7")]), .null]))
        #expect(try decoder.decode([UInt8(ascii: "E")]) == .streamStop)
        #expect(try decoder.decode([UInt8(ascii: "A")] + Self.int32(900) + Self.int32(901)) == .streamAbort(xid: 900, subxid: 901))
        #expect(try decoder.decode(Self.insert(xid: nil)) == plain)
    }

    @Test("a message cut short, an unknown kind or a value length past the end is an error, never a guess")
    func malformed() {
        var decoder = PgOutputDecoder()
        for bytes in [Array(Self.insert(xid: nil).dropLast(3)), [UInt8(ascii: "Z")], [], [UInt8(ascii: "B"), 0, 0]] {
            #expect(throws: PgOutputMessage.Malformed.self, "\(bytes)") { try decoder.decode(bytes) }
        }
        var tooLong = Self.insert(xid: nil)
        tooLong[9...12] = ArraySlice(Self.int32(1_000))
        #expect(throws: PgOutputMessage.Malformed.self) { try decoder.decode(tooLong) }
    }
}
