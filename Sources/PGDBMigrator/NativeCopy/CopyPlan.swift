/// One unit of the native copy: a whole table, or one part of a split table.
struct CopyPart: Sendable, Hashable, Codable {
    var table: CatalogTable
    /// 0-based; `count` is 1 for a whole table.
    var index: Int
    var count: Int
    var range: Range?
    /// Estimated bytes, for largest-first ordering and progress.
    var bytes: Int

    /// A part's rows, as a condition both ends of the range leave open at the
    /// extremes, so rows beyond the estimate (a key above the max read, a block
    /// past the size read) still belong to the first or last part.
    enum Range: Sendable, Hashable, Codable {
        case key(column: String, from: Int64?, to: Int64?)
        case blocks(from: Int?, to: Int?)

        var condition: String {
            switch self {
            case .key(let column, let from, let to):
                return [from.map { "\(column) >= \($0)" }, to.map { "\(column) < \($0)" }].compactMap { $0 }.joined(separator: " AND ")
            case .blocks(let from, let to):
                // TID range scans (PostgreSQL 14+) read just these blocks.
                return [from.map { "ctid >= '(\($0),0)'::tid" }, to.map { "ctid < '(\($0),0)'::tid" }].compactMap { $0 }
                    .joined(separator: " AND ")
            }
        }
    }

    /// The whole table as one part.
    static func whole(_ table: CatalogTable) -> CopyPart { CopyPart(table: table, index: 0, count: 1, range: nil, bytes: table.bytes) }

    var isWholeTable: Bool { range == nil }
    var isBlockRange: Bool {
        if case .blocks = range { return true }
        return false
    }
    /// `public.big part 2/4`, for logs.
    var label: String { count == 1 ? table.name.description : "\(table.name) part \(index + 1)/\(count)" }
    /// A stable key for the resume state.
    var key: String { "\(table.oid)/\(index)/\(count)" }

    /// The source side: the whole table, or the part's rows.
    var copyOutSQL: String {
        guard let range else { return "COPY \(table.copyTarget) TO STDOUT" }
        let columns = table.columns.isEmpty ? "*" : table.columns
        return "COPY (SELECT \(columns) FROM ONLY \(table.name) WHERE \(range.condition)) TO STDOUT"
    }
}

/// Splits tables into copy parts and orders them largest first.
struct CopyPlan {
    /// Tables above this many bytes are split.
    var splitBytes: Int
    /// Tables without an integer key may be split by block ranges: only where TID range
    /// scans exist (PostgreSQL 14+), else every part would read the whole table.
    var blockRanges = true
    /// Never more parts than this per table: each part is a COPY with its own scan.
    var maximumParts = 64

    /// How many parts a table of `bytes` is copied in.
    func partCount(bytes: Int) -> Int {
        guard splitBytes > 0, bytes > splitBytes else { return 1 }
        return min(maximumParts, (bytes + splitBytes - 1) / splitBytes)
    }

    /// The parts of one table; `keyBounds` is the integer key's min and max in
    /// the snapshot (nil: split by blocks, if ``blockRanges``).
    func parts(of table: CatalogTable, keyBounds: (min: Int64, max: Int64)?) -> [CopyPart] {
        let whole = [CopyPart.whole(table)]
        var count = partCount(bytes: table.bytes)
        guard count > 1 else { return whole }
        var boundaries: [Int64] = []
        if let key = table.integerKey, let bounds = keyBounds {
            let span = bounds.max.subtractingReportingOverflow(bounds.min)
            guard !span.overflow else { return whole }
            count = Int(min(Int64(count), span.partialValue))
            guard count > 1 else { return whole }
            boundaries = (1..<count).map { bounds.min + span.partialValue / Int64(count) * Int64($0) }
            return ranges(boundaries).enumerated().map { index, range in
                CopyPart(
                    table: table, index: index, count: boundaries.count + 1, range: .key(column: key, from: range.0, to: range.1),
                    bytes: table.bytes / (boundaries.count + 1))
            }
        }
        count = blockRanges ? min(count, table.blocks) : 1
        guard count > 1 else { return whole }
        boundaries = (1..<count).map { Int64(table.blocks / count * $0) }
        return ranges(boundaries).enumerated().map { index, range in
            CopyPart(
                table: table, index: index, count: boundaries.count + 1,
                range: .blocks(from: range.0.map(Int.init), to: range.1.map(Int.init)), bytes: table.bytes / (boundaries.count + 1))
        }
    }

    /// `[b1, b2]` → `(nil, b1), (b1, b2), (b2, nil)`.
    private func ranges(_ boundaries: [Int64]) -> [(Int64?, Int64?)] {
        let edges: [Int64?] = [nil] + boundaries.map { $0 } + [nil]
        return (0..<(edges.count - 1)).map { (edges[$0], edges[$0 + 1]) }
    }

    /// Every part, largest first, so the long poles start at once and the small
    /// tables fill the gaps at the end.
    static func ordered(_ parts: [CopyPart]) -> [CopyPart] {
        parts.sorted { ($0.bytes, $1.table.name.description, $1.index) > ($1.bytes, $0.table.name.description, $0.index) }
    }
}
