import Foundation
import PostgresClient

/// Proves, table by table, that the target holds the same rows as the source.
///
/// Each server computes, for each table (or part of a big table), the row
/// count and the sum of a 64-bit hash of every row's text (`hashtextextended`,
/// the stable hash behind hash partitioning, summed exactly as numeric):
/// order-independent, no sort, no row leaves the server; a changed, missing or
/// extra row goes unnoticed only if hashes collide (about 2^-64). Printing the
/// row is most of the cost, so it is printed once (a second hash of the same
/// text made PostgreSQL print every row twice, and verify twice as slow). Both
/// sides read with the same pinned session settings so equal data prints, and
/// hashes, equally. Parts run on `jobs` workers, each with its own pair of
/// connections.
struct Verifier {
    var source: ConnectionString
    var target: ConnectionString
    /// What is compared: the migration's resolved tables and sequences.
    var tables: TableSet
    var jobs: Int
    var settings: VerifySettings
    var events: EventEmitter
    /// Off at cutover: sequences are synced after verify there.
    var checkSequences = true
    /// Read the target in this exported snapshot (a frozen cutover's, as of the barrier).
    var targetSnapshot: String? = nil
    /// Tables the offline copy verified as it copied them (``StreamVerification``): those whose
    /// digests agree are not read again; those whose digests differ are compared here, range by range.
    var streamed: [QualifiedName: StreamVerification.TableResult] = [:]

    func run() async throws -> VerifyReport {
        let started = ContinuousClock.now
        let sourceConnection = try await open(source, role: .source)
        let targetConnection = try await open(target, role: .target)
        // The migration's tables on both sides; without filters, also every other table the target holds.
        async let sourceTablesQuery = TableCatalog.tables(tables.tables, on: sourceConnection)
        async let targetTablesQuery = TableCatalog.tables(tables.filter.isEmpty ? nil : tables.tables, on: targetConnection)
        let (sourceTables, targetTables) = try await (sourceTablesQuery, targetTablesQuery)

        var report = VerifyReport()
        let targetByName = Dictionary(targetTables.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let sourceNames = Set(sourceTables.map(\.name))
        report.missingOnTarget = sourceTables.map(\.name).filter { targetByName[$0] == nil }.map(\.shown).sorted()
        report.extraOnTarget = targetTables.map(\.name).filter { !sourceNames.contains($0) }.map(\.shown).sorted()
        let common = sourceTables.filter { targetByName[$0.name] != nil }

        report.schemaDifferences = try await SchemaComparison.differences(
            of: common.map(\.name), source: sourceConnection, target: targetConnection)
        if checkSequences {
            report.sequencesBehind = try await SequenceComparison.behind(
                tables.sequences, source: sourceConnection, target: targetConnection)
        }

        let alreadyVerified = common.filter { streamed[$0.name]?.matches == true }
        let inServer = common.filter { streamed[$0.name]?.matches != true }
        if !streamed.isEmpty {
            let summed = alreadyVerified.filter { if case .values = streamed[$0.name]?.target { true } else { false } }.count
            let target =
                switch summed {
                case 0: "the target's read back"
                case alreadyVerified.count: "the target's rows hashed and summed in its server"
                default: "the target's read back, or for \(summed) of them hashed and summed in its server"
                }
            events.info(
                .verify,
                "\(alreadyVerified.count) table(s) verified as they were copied (the source's COPY stream digested, \(target)); "
                    + "\(inServer.count) compared in the servers",
                ["streamed": .int(alreadyVerified.count), "summed_in_target": .int(summed), "in_server": .int(inServer.count)])
        }
        let parts = try await Self.plan(inServer, splitBytes: settings.splitBytes, source: sourceConnection)
        let valueHashed = try await Self.valueHashed(
            inServer.map(\.name), source: sourceConnection, targetVersion: await targetConnection.serverVersion)
        var results = try await checksum(parts, valueHashed: valueHashed)
        for table in alreadyVerified {
            let digests = streamed[table.name]!
            results.append(
                PartResult(
                    part: Part(table: table, condition: "true", label: "whole table"), sourceRows: digests.source.rowCount,
                    targetRows: digests.target.rowCount, matches: true))
        }
        var byTable: [QualifiedName: [PartResult]] = [:]
        for result in results { byTable[result.part.table.name, default: []].append(result) }
        for table in common {
            let tableResults = byTable[table.name] ?? []
            let differing = tableResults.filter { !$0.matches }
            var rows: [String] = []
            if settings.showRows > 0 {
                for result in differing where rows.count < settings.showRows {
                    rows += try await RowDifferences.list(
                        result.part, limit: settings.showRows - rows.count, source: sourceConnection, target: targetConnection)
                }
            }
            let entry = VerifyReport.TableResult(
                table: table.name.shown, sourceRows: tableResults.reduce(0) { $0 + $1.sourceRows },
                targetRows: tableResults.reduce(0) { $0 + $1.targetRows }, matches: differing.isEmpty,
                differingRanges: differing.count == tableResults.count && tableResults.count == 1 ? [] : differing.map(\.part.label),
                differingRows: rows, bytes: table.bytes)
            report.tables.append(entry)
            if entry.matches, let digests = streamed[table.name], !digests.matches {
                events.warning(
                    .verify,
                    "table \(table.name.shown): the copy's stream digests differ (\(digests.source.rowCount) rows read, "
                        + "\(digests.target.rowCount) read back) but the servers' comparison finds the same rows; trusting the servers",
                    ["table": .string(table.name.shown)])
            }
            if !entry.matches {
                events.emit(
                    MigrationEvent(
                        stage: .verify, level: .error, message: "table \(table.name.shown) differs",
                        detail: [
                            "table": .string(table.name.shown), "source_rows": .int(entry.sourceRows),
                            "target_rows": .int(entry.targetRows), "ranges": .list(entry.differingRanges),
                        ]))
            }
        }
        report.seconds = (ContinuousClock.now - started).seconds
        await sourceConnection.close()
        await targetConnection.close()
        return report
    }

    private func open(_ connectionString: ConnectionString, role: Endpoint.Role) async throws -> Connection {
        let connection = try await Endpoint(role: role, connectionString: connectionString).connect(label: "verify", stage: .verify)
        try await connection.keepAliveWhileIdle()
        try await connection.pinTextFormats()
        // Names print schema-qualified whatever the server's, role's or database's search_path.
        try await connection.execute("SET search_path = ''")
        if role == .target, let targetSnapshot { try await connection.importSnapshot(targetSnapshot) }
        return connection
    }

    // MARK: - Parts

    /// A table, or one key range / hash bucket of it.
    struct Part: Sendable {
        var table: CatalogTable
        /// SQL condition selecting the part's rows (`true` for a whole table).
        var condition: String
        var label: String
    }

    struct PartResult: Sendable {
        var part: Part
        var sourceRows: Int
        var targetRows: Int
        var matches: Bool
    }

    /// Whole tables, except those over `splitBytes`: split by ranges of an
    /// integer primary key, or else into buckets by a hash of the key (or of
    /// the whole row) — never by physical position, which differs between servers.
    static func plan(_ tables: [CatalogTable], splitBytes: Int, source: Connection) async throws -> [Part] {
        var parts: [Part] = []
        for table in tables.sorted(by: { $0.bytes > $1.bytes }) {
            let count = CopyPlan(splitBytes: splitBytes).partCount(bytes: table.bytes)
            guard count > 1 else {
                parts.append(Part(table: table, condition: "true", label: "whole table"))
                continue
            }
            if let key = table.integerKey,
                let row = try await source.query("SELECT min(\(key))::text, max(\(key))::text FROM ONLY \(table.name)").rows.first,
                let low = row[0].flatMap({ Int64($0) }), let high = row[1].flatMap({ Int64($0) })
            {
                let step = max(1, (high - low) / Int64(count) + 1)
                var start = low
                while start <= high {
                    let end = start + step
                    parts.append(
                        Part(table: table, condition: "\(key) >= \(start) AND \(key) < \(end)", label: "\(key) in [\(start), \(end))"))
                    start = end
                }
            } else {
                let keyExpression = table.keyColumns.isEmpty ? "t::text" : "ROW(\(table.keyColumns.joined(separator: ", ")))::text"
                for bucket in 0..<count {
                    parts.append(
                        Part(
                            table: table, condition: "(hashtext(\(keyExpression)) & 2147483647) % \(count) = \(bucket)",
                            label: "hash bucket \(bucket + 1) of \(count)"))
                }
            }
        }
        return parts
    }

    static func checksumSQL(_ part: Part, hashingValues: Bool = false) -> String {
        sumSQL(
            of: hashingValues ? PostgresHash.rowSQL("t") : "hashtextextended(t::text, 0)", in: part.table.name, where: part.condition)
    }

    /// The count of `table`'s rows (`t`) that meet `condition`, and the exact sum of each one's `rowHash`, as text.
    private static func sumSQL(of rowHash: String, in table: QualifiedName, where condition: String) -> String {
        "SELECT count(*)::text, coalesce(sum(\(rowHash)), 0)::text FROM ONLY \(table) t WHERE \(condition)"
    }

    /// Tables whose rows can be hashed value by value (`hash_record_extended`, PostgreSQL 14+ on both
    /// servers) instead of through their text, which costs most of a verify: every column of a type whose
    /// equality is identity — integers, bool, text, varchar and char(n) under a deterministic collation
    /// (char(n) pads every value to n: its trailing blanks, which its hash and equality ignore, are never
    /// a difference), date and time stamps, uuid, bytea — so equal hashes mean equal values, as equal text
    /// does. Other types (numeric's 1.0 = 1.00, float's -0 = 0, bpchar without a length, citext, json, …)
    /// keep the text.
    static func valueHashed(_ tables: [QualifiedName], source: Connection, targetVersion: Int) async throws -> Set<QualifiedName> {
        Set(try await valueHashKinds(tables, source: source, targetVersion: targetVersion).keys)
    }

    /// SQL true when every column of the table `relation` (an SQL expression of its oid) is of a type
    /// ``valueHashed(_:source:targetVersion:)`` admits. Those types' binary forms have not changed since
    /// PostgreSQL 10, so such a table's values may also travel in binary between major versions.
    static func valueHashableSQL(_ relation: String) -> String {
        """
        NOT EXISTS (
            SELECT 1 FROM pg_attribute a
            WHERE a.attrelid = \(relation) AND a.attnum > 0 AND NOT a.attisdropped
              AND NOT ((a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'bool'::regtype, 'text'::regtype,
                                       'varchar'::regtype, 'date'::regtype, 'timestamp'::regtype, 'timestamptz'::regtype,
                                       'uuid'::regtype, 'bytea'::regtype)
                        OR (a.atttypid = 'bpchar'::regtype AND a.atttypmod > 0))
                       AND a.attcollation IN (0, 100, 950)))
        """
    }

    /// ``valueHashed(_:source:targetVersion:)``'s tables, each with how ``PostgresHash`` hashes its stored
    /// (not generated) columns, in their order: what a binary COPY of it carries.
    static func valueHashKinds(_ tables: [QualifiedName], source: Connection, targetVersion: Int) async throws
        -> [QualifiedName: [PostgresHash.Kind]]
    {
        let sourceVersion = await source.serverVersion
        guard !tables.isEmpty, sourceVersion >= 140_000, targetVersion >= 140_000 else { return [:] }
        let rows = try await source.query(
            """
            SELECT n.nspname, c.relname,
                   (SELECT json_agg(CASE WHEN a.atttypid = 'int2'::regtype THEN 'int16'
                                         WHEN a.atttypid IN ('int4'::regtype, 'date'::regtype) THEN 'int32'
                                         WHEN a.atttypid IN ('int8'::regtype, 'timestamp'::regtype, 'timestamptz'::regtype) THEN 'int64'
                                         WHEN a.atttypid = 'bool'::regtype THEN 'bool'
                                         WHEN a.atttypid = 'bpchar'::regtype THEN 'blankPadded' ELSE 'bytes' END ORDER BY a.attnum)
                      FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')::text
            FROM unnest($1::text[]) AS r(name)
            JOIN pg_class c ON c.oid = r.name::regclass JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE \(valueHashableSQL("c.oid"))
            """, [SQL.textArray(tables.map(\.description))])
        var kinds: [QualifiedName: [PostgresHash.Kind]] = [:]
        for row in rows.rows {
            let columns = row[2].flatMap { try? JSONDecoder().decode([PostgresHash.Kind].self, from: Data($0.utf8)) } ?? []
            kinds[QualifiedName(schema: row[0]!, name: row[1]!)] = columns
        }
        return kinds
    }

    /// The count and the sum of PostgreSQL's hash of `table`'s stored columns, as a binary COPY of them is
    /// summed by ``CopyStreamDigest/init(hashingValuesOf:)``.
    static func rowSumSQL(_ table: CatalogTable) -> String {
        sumSQL(of: PostgresHash.rowSQL("ROW(\(table.columns))"), in: table.name, where: "true")
    }

    /// Runs every part on `jobs` workers, each with one connection to each server, both sides at once.
    private func checksum(_ parts: [Part], valueHashed: Set<QualifiedName>) async throws -> [PartResult] {
        let queue = AsyncQueue(parts, closed: true)
        return try await withThrowingTaskGroup(of: [PartResult].self) { group in
            for _ in 0..<max(1, min(jobs, parts.count)) {
                group.addTask {
                    let sourceConnection = try await open(source, role: .source)
                    let targetConnection = try await open(target, role: .target)
                    var results: [PartResult] = []
                    while let part = await queue.next() {
                        let sql = Self.checksumSQL(part, hashingValues: valueHashed.contains(part.table.name))
                        async let sourceRow = sourceConnection.query(sql)
                        async let targetRow = targetConnection.query(sql)
                        let (sourceSum, targetSum) = try await (sourceRow.rows[0], targetRow.rows[0])
                        results.append(
                            PartResult(
                                part: part, sourceRows: Int(sourceSum[0] ?? "0") ?? 0, targetRows: Int(targetSum[0] ?? "0") ?? 0,
                                matches: sourceSum == targetSum))
                    }
                    await sourceConnection.close()
                    await targetConnection.close()
                    return results
                }
            }
            var all: [PartResult] = []
            for try await results in group { all += results }
            return all
        }
    }
}

/// How verify behaves.
public struct VerifySettings: Sendable {
    public enum Mode: String, Sendable, CaseIterable {
        /// Do not verify after the migration.
        case off
        /// Verify; a mismatch is a warning.
        case warn
        /// Verify; a mismatch fails the run.
        case strict
    }

    public var mode: Mode
    /// Where an offline native copy's rows are verified.
    public enum Method: String, Sendable, CaseIterable {
        /// Table by table, whichever measured faster here: in the servers where they hash rows value by
        /// value (``Verifier/valueHashed(_:source:targetVersion:)``: no row printed), else as they are copied.
        case auto
        /// As they are copied: the source's COPY stream digested on its way, the target's copy read back
        /// (``StreamVerification``); the source is read once.
        case stream
        /// After the copy, each server checksums its own rows (``Verifier``): no row crosses the network.
        case server
    }

    /// How many differing rows to list per mismatch (by key).
    public var showRows: Int
    /// Tables larger than this are checked in parts, in parallel.
    public var splitBytes: Int
    /// Offline native copies only: `--mode verify`, the dump method and online cutovers verify in the servers.
    public var method: Method

    public init(mode: Mode = .strict, showRows: Int = 0, splitBytes: Int = 128 * 1024 * 1024, method: Method = .auto) {
        self.mode = mode
        self.showRows = showRows
        self.splitBytes = splitBytes
        self.method = method
    }
}
