/// What verify found: per table, whether source and target hold the same rows,
/// plus tables, sequences and schema that differ.
public struct VerifyReport: Sendable, Encodable {
    public struct TableResult: Sendable, Encodable {
        /// `schema.table`, each part double-quoted where it needs it.
        public var table: String
        public var sourceRows: Int
        public var targetRows: Int
        /// Whether every row's content matches (order-independent checksum).
        public var matches: Bool
        /// The key ranges or hash buckets whose content differs (empty when it matches).
        public var differingRanges: [String]
        /// Up to `--verify-show-rows` differing rows, by key.
        public var differingRows: [String]
        public var bytes: Int
    }

    public struct SequenceResult: Sendable, Encodable {
        public var sequence: String
        public var source: String
        public var target: String
    }

    public var tables: [TableResult] = []
    public var missingOnTarget: [String] = []
    public var extraOnTarget: [String] = []
    /// Sequences whose target value is behind the source's.
    public var sequencesBehind: [SequenceResult] = []
    /// `schema.table` → what differs (columns and types, indexes, constraints).
    public var schemaDifferences: [String: [String]] = [:]
    public var seconds: Double = 0

    public var matches: Bool {
        tables.allSatisfy(\.matches) && missingOnTarget.isEmpty && extraOnTarget.isEmpty && sequencesBehind.isEmpty
            && schemaDifferences.isEmpty
    }

    /// One line per problem, for messages and logs.
    public var problems: [String] {
        var lines: [String] = []
        for table in tables where !table.matches {
            var line = "table \(table.table) differs (source \(table.sourceRows) rows, target \(table.targetRows) rows)"
            if !table.differingRanges.isEmpty { line += " in \(table.differingRanges.joined(separator: ", "))" }
            lines.append(line)
            lines += table.differingRows.map { "  \($0)" }
        }
        lines += missingOnTarget.map { "table \($0) is missing on the target" }
        lines += extraOnTarget.map { "table \($0) exists on the target but not on the source" }
        lines += sequencesBehind.map { "sequence \($0.sequence) is behind on the target (source \($0.source), target \($0.target))" }
        for (table, differences) in schemaDifferences.sorted(by: { $0.key < $1.key }) {
            lines += differences.map { "schema of \(table): \($0)" }
        }
        return lines
    }
}
