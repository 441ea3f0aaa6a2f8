import Foundation
import PostgresClient

/// The native copy: schema from `pg_dump`, data streamed from the source's
/// `COPY … TO STDOUT` into the target's `COPY … FROM STDIN` by `--jobs`
/// workers, largest tables (or table parts) first, all inside one snapshot;
/// each table's indexes built by `--index-jobs` workers as soon as that table
/// is loaded; then the rest of post-data with `pg_restore`.
struct NativeCopy {
    var config: MigrationConfig
    var report: PreflightReport
    var events: EventEmitter
    /// Progress on disk: each part, the target's preparation, post-data.
    var store: RunStateStore
    var resumePlan: ResumePlan
    /// Offline verify riding along with the copy; nil: not digested (online, or `--verify off`).
    var streamed: StreamVerification? = nil

    var source: Endpoint { config.sourceEndpoint }
    var target: Endpoint { config.targetEndpoint }

    /// Copies the database as of `snapshot` (online: the slot's), or of a
    /// snapshot exported here (offline). `releaseSnapshot` runs once no reader
    /// needs the snapshot any more. Returns tolerated errors.
    func run(
        snapshot given: String?, prepareTarget: () async throws -> Void, releaseSnapshot: () async -> Void
    ) async throws -> [String] {
        let dumpRestore = DumpRestore(config: config, tools: report.tools, events: events, tables: report.tables)
        let directory = try DumpDirectory.create(at: config.dumpPath, reclaiming: resumePlan.reclaimsDumpDirectory)
        defer { directory.remove() }
        events.info(
            .dump,
            given == nil
                ? "exporting a snapshot of the source: the schema dump and every copy worker read it"
                : "reading the source's catalog in the slot's snapshot")
        let exported = given == nil ? try await ExportedSnapshot.export(from: source) : nil
        let snapshot = given ?? exported!.name
        var catalogSession: Connection?
        var released = false
        func release() async {
            guard !released else { return }
            released = true
            await catalogSession?.close()
            await releaseSnapshot()
            await exported?.release()
        }
        do {
            // The catalog session reads what to copy and holds ACCESS SHARE locks
            // on it until the copy is done, so no DDL can change a table meanwhile.
            let session = try await source.connect(label: "catalog", stage: .dump)
            catalogSession = session
            // A statement started after cancellation runs unguarded (for cleanup), so check before each one that can wait on a lock.
            try Task.checkCancellation()
            try await session.keepAliveWhileIdle()
            try await session.importSnapshot(snapshot)
            try Task.checkCancellation()
            try await report.tables.checkUnchanged(inSnapshotOn: session, stage: .dump)
            let catalog = CopyCatalog(set: report.tables)
            let tables = try await catalog.tables(on: session)
            try Task.checkCancellation()
            if !tables.isEmpty {
                try await session.execute(
                    "LOCK TABLE " + tables.map { "ONLY \($0.name)" }.joined(separator: ", ") + " IN ACCESS SHARE MODE")
            }
            try Task.checkCancellation()
            let builds = try await catalog.indexBuilds(of: tables, on: session)
            // Between major versions, only tables the servers can hash value by value travel in binary.
            let sameMajor = report.sourceServerVersion / 10_000 == report.targetServerVersion / 10_000
            let hashable =
                streamed != nil && config.verify.method == .auto || !sameMajor
                ? try await Verifier.valueHashKinds(tables.map(\.name), source: session, targetVersion: report.targetServerVersion)
                : [:]
            let binary = Self.binaryTables(tables, sameMajor: sameMajor, hashable: hashable)
            let digested = streamed == nil ? [:] : digestedTables(tables, binary: binary, hashable: hashable)
            // A resumed copy keeps the interrupted run's parts, so no range is copied twice or missed.
            let recorded = store.current.copy
            let recordedPlan = resumePlan.continuesCopy ? store.plan : nil
            let resuming = recordedPlan != nil
            let parts: [CopyPart]
            if let recordedPlan { parts = recordedPlan } else { parts = try await plan(tables, on: session) }
            try Task.checkCancellation()

            events.info(
                .dump, "dumping the schema with pg_dump (table data is streamed, not dumped)",
                ["snapshot": .string(snapshot), "path": .string(directory.root)])
            try await dumpRestore.dumpSchema(into: directory, snapshot: snapshot, excludingDataOf: tables.map(\.name))
            let archiveBytes = directory.size
            events.info(
                .dump, "dump finished: the schema and the small data pg_dump carries, \(formatBytes(archiveBytes))",
                ["bytes": .int(archiveBytes)])

            var tolerated: [String] = []
            if resuming {
                let done = store.parts.values.filter { $0 }.count
                events.info(
                    .restore, "resuming the interrupted run recorded in \(store.path): \(done) of \(parts.count) part(s) were copied",
                    ["parts_done": .int(done), "parts": .int(parts.count), "state": .string(store.path)])
            } else {
                store.forgetCopy()
                try store.update { $0.copy = RunState.CopyState(targetTouched: true) }
                try await prepareTarget()
                tolerated += try await dumpRestore.restore(section: "pre-data", from: directory.archivePath, jobs: 1)
                // Sequence values, large objects and extension configuration rows: small, and pg_dump knows them best.
                tolerated += try await dumpRestore.restore(section: "data", from: directory.archivePath, jobs: config.jobs)
                try store.recordPlan(parts)
                try store.update { $0.copy.targetPrepared = true }
            }
            tolerated += try await copyData(
                parts, builds: builds, snapshot: snapshot, resuming: resuming, binary: binary, digesting: digested)
            await release()

            guard !(resuming && recorded.postDataDone) else { return tolerated }
            let list = try await dumpRestore.restoreList(
                of: directory.archivePath, writingTo: directory.listPath,
                excluding: Set(builds.map { $0.entryType == "INDEX" ? .index($0.catalogOID) : .constraint($0.catalogOID) }))
            // A post-data pass the interrupted run began is run again; what it already made is skipped.
            let rerun = resuming && recorded.postDataStarted
            try store.update { $0.copy.postDataStarted = true }
            tolerated += try await dumpRestore.restore(
                section: "post-data", from: directory.archivePath, jobs: config.indexJobs, list: list,
                skippingExisting: rerun, serverOptions: "-c maintenance_work_mem=\(config.maintenanceWorkMem / 1024)kB")
            try store.update { $0.copy.postDataDone = true }
            return tolerated
        } catch {
            await release()
            throw error
        }
    }

    /// The tables verified as they are copied (``StreamVerification``), and how. Under `--verify-method stream`
    /// every table's rows are digested and read back; under `auto`, a table the servers can hash value by value
    /// (`hashable`) is summed as the server hashes it where it travels in binary (the target sums it in its
    /// server, nothing is read back), and is left to the servers after the copy where it travels as text; the
    /// others are digested.
    private func digestedTables(
        _ tables: [CatalogTable], binary: Set<QualifiedName>, hashable: [QualifiedName: [PostgresHash.Kind]]
    ) -> [QualifiedName: StreamVerification.Method] {
        guard config.verify.method == .auto else { return Dictionary(uniqueKeysWithValues: tables.map { ($0.name, .rows) }) }
        var methods: [QualifiedName: StreamVerification.Method] = [:]
        for table in tables {
            guard let kinds = hashable[table.name] else {
                methods[table.name] = .rows
                continue
            }
            if binary.contains(table.name), !kinds.isEmpty { methods[table.name] = .values(kinds) }
        }
        return methods
    }

    /// The tables whose values travel in binary COPY: no text formatting on the source, no parsing on the target.
    ///
    /// Within one major version, every table of built-in types (``CatalogTable/binarySafe``). Binary formats
    /// may change between major versions, so across them only tables whose every column is of a type whose
    /// binary form has not changed since PostgreSQL 10 and that the servers hash value by value (`hashable`:
    /// integers, bool, text, varchar, char(n), date, time stamps, uuid, bytea; PostgreSQL 14 or later on both
    /// sides): the copy is then verified as it goes, and a difference in how a value was read would show there.
    static func binaryTables(
        _ tables: [CatalogTable], sameMajor: Bool, hashable: [QualifiedName: [PostgresHash.Kind]]
    ) -> Set<QualifiedName> {
        Set(tables.filter { $0.binarySafe && (sameMajor || hashable[$0.name].map { !$0.isEmpty } == true) }.map(\.name))
    }

    /// Splits the tables above `--split-tables-larger-than`, reading integer key bounds in the snapshot.
    private func plan(_ tables: [CatalogTable], on session: Connection) async throws -> [CopyPart] {
        let plan = CopyPlan(splitBytes: config.splitTablesLargerThan, blockRanges: report.sourceServerVersion >= 140_000)
        var parts: [CopyPart] = []
        for table in tables {
            var bounds: (min: Int64, max: Int64)?
            if plan.partCount(bytes: table.bytes) > 1, let key = table.integerKey {
                let row = try await session.query("SELECT min(\(key))::text, max(\(key))::text FROM ONLY \(table.name)").rows[0]
                if let low = row[0].flatMap({ Int64($0) }), let high = row[1].flatMap({ Int64($0) }) { bounds = (low, high) }
            }
            parts += plan.parts(of: table, keyBounds: bounds)
        }
        return CopyPlan.ordered(parts)
    }

}
