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

    private var source: Endpoint { Endpoint(role: .source, connectionString: config.source) }
    private var target: Endpoint { Endpoint(role: .target, connectionString: config.target) }

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
            // The tables Validate resolved must be the snapshot's: a table created, dropped or renamed in
            // between would be copied without being published, or published without being copied.
            let resolved = try await TableSet.resolve(config.filter, inSnapshotOn: session, stage: .dump)
            guard resolved == report.tables else {
                throw MigrationError(
                    .dump, "the tables to migrate changed between Validate and the snapshot (a table was created, dropped or "
                        + "renamed meanwhile): " + report.tables.differences(from: resolved).joined(separator: ", "),
                    fix: "run again once no schema change is under way on the source")
            }
            let catalog = CopyCatalog(set: report.tables)
            let tables = try await catalog.tables(on: session)
            try Task.checkCancellation()
            if !tables.isEmpty {
                try await session.execute(
                    "LOCK TABLE " + tables.map { "ONLY \($0.name)" }.joined(separator: ", ") + " IN ACCESS SHARE MODE")
            }
            try Task.checkCancellation()
            let builds = try await catalog.indexBuilds(of: tables, on: session)
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
            tolerated += try await copyData(parts, builds: builds, snapshot: snapshot, resuming: resuming)
            await release()

            guard !(resuming && recorded.postDataDone) else { return tolerated }
            let contents = try await dumpRestore.tableOfContents(of: directory.archivePath, writingTo: directory.listPath)
            let list = RestoreList(lines: contents).excluding(Set(builds.map { "\($0.entryType) \($0.catalogOID)" }))
            try list.joined(separator: "\n").write(toFile: directory.listPath, atomically: true, encoding: .utf8)
            // A post-data pass the interrupted run began is run again; what it already made is skipped.
            let rerun = resuming && recorded.postDataStarted
            try store.update { $0.copy.postDataStarted = true }
            tolerated += try await dumpRestore.restore(
                section: "post-data", from: directory.archivePath, jobs: config.indexJobs, list: directory.listPath,
                skippingExisting: rerun, serverOptions: "-c maintenance_work_mem=\(config.maintenanceWorkMem / 1024)kB")
            try store.update { $0.copy.postDataDone = true }
            return tolerated
        } catch {
            await release()
            throw error
        }
    }

    /// Binary COPY's format is stable within a major version only.
    private var binaryAllowed: Bool { report.sourceServerVersion / 10_000 == report.targetServerVersion / 10_000 }

    /// Splits the tables above `--split-tables-larger-than`, reading integer key bounds in the snapshot.
    private func plan(_ tables: [CopyTable], on session: Connection) async throws -> [CopyPart] {
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

    /// Runs the copy workers and the index workers together; returns tolerated index errors.
    private func copyData(_ parts: [CopyPart], builds: [IndexBuild], snapshot: String, resuming: Bool) async throws -> [String] {
        let (work, finishedTables, clearing) = try await resuming ? remainingWork(parts) : (parts, [], [])
        var pendingBuilds = builds
        if resuming { pendingBuilds = try await unbuilt(builds) }
        let progress = CopyProgress(parts: work)
        let queue = AsyncQueue(work)
        await queue.close()
        let indexWork = AsyncQueue<IndexBuild>()
        let buildsByTable = Dictionary(grouping: pendingBuilds, by: \.table)
        for table in finishedTables { for build in buildsByTable[table.name] ?? [] { await indexWork.append(build) } }
        let copyWorkers = min(config.jobs, max(work.count, 1))
        let running = Mutex(copyWorkers)
        let tableCount = Set(work.map(\.table)).count
        events.info(
            .restore,
            "copying \(tableCount) table(s) in \(work.count) part(s), \(formatBytes(progress.totalBytes)), "
                + "with \(copyWorkers) copy and \(config.indexJobs) index worker(s)",
            ["tables": .int(tableCount), "parts": .int(work.count), "bytes": .int(progress.totalBytes),
             "jobs": .int(copyWorkers), "index_jobs": .int(config.indexJobs)])
        let reporter = Task { [events] in await progress.report(every: .seconds(2), to: events) }
        defer { reporter.cancel() }

        let tolerated = try await withThrowingTaskGroup(of: [String].self) { group in
            for worker in 0..<copyWorkers {
                group.addTask {
                    defer {
                        if running.withLock({ $0 -= 1; return $0 }) == 0 {
                            reporter.cancel()
                            Task { await indexWork.close() }
                        }
                    }
                    let source = try await source.connect(label: "copy-out-\(worker)", stage: .restore)
                    defer { Task { await source.close() } }
                    let target = try await target.connect(label: "copy-in-\(worker)", stage: .restore)
                    defer { Task { await target.close() } }
                    for session in [source, target] {
                        try await session.keepAliveWhileIdle()
                        try await session.pinTextFormats(encoding: report.sourceDatabase.encoding)
                    }
                    try await source.importSnapshot(snapshot)
                    let copy = TableCopy(source: source, target: target, binaryAllowed: binaryAllowed)
                    let lockWait = LockWait(server: self.target, events: events, stage: .restore, timeout: config.lockTimeout)
                    while let part = await queue.next() {
                        try Task.checkCancellation()
                        let result: TableCopy.Result
                        do {
                            // A DDL statement queued behind the catalog session's lock would hold this COPY,
                            // and the DDL would wait for us: fail at once instead (as pg_dump's workers do).
                            try await source.execute("LOCK TABLE ONLY \(part.table.name) IN ACCESS SHARE MODE NOWAIT")
                            progress.started(part)
                            try store.record(.started, part: part.key)
                            let clear = clearing.contains(part.key)
                            result = try await lockWait.watching("copying \(part.label) into the target", session: target) {
                                try await copy.run(part, clearing: clear) { progress.advance(part, by: $0) }
                            }
                        } catch let error as PostgresError where error.sqlState == "55P03" {  // lock_not_available
                            throw MigrationError(
                                .restore, "cannot lock \(part.table.name) on the source without waiting: \(error.message)",
                                fix: "another session is waiting to change that table (DDL); let it finish or stop it, "
                                    + "then rerun the same command with --resume")
                        } catch let error as PostgresError {
                            throw MigrationError(
                                .restore, "copying \(part.label) failed: \(error)",
                                fix: "nothing was committed for this part; once the cause is fixed, rerun the same command "
                                    + "with --resume to carry on from the parts already copied")
                        }
                        try store.record(.committed, part: part.key)
                        if let finished = progress.finished(part, rows: result.rows, binary: result.binary) {
                            events.info(.restore, finished.message, finished.detail)
                            for build in buildsByTable[part.table.name] ?? [] { await indexWork.append(build) }
                        }
                    }
                    return []
                }
            }
            for worker in 0..<config.indexJobs {
                group.addTask { try await buildIndexes(from: indexWork, worker: worker) }
            }
            var tolerated: [String] = []
            for try await errors in group { tolerated += errors }
            return tolerated
        }
        let summary = progress.summary
        events.info(.restore, summary.message, summary.detail)
        return tolerated
    }

    /// What a resumed copy still has to do. Committed parts are skipped (and
    /// said so). A part that was started may have committed unrecorded: a whole
    /// table is truncated in its load anyway, a key range is deleted first
    /// (`clearing`), and a table split by blocks is emptied and copied again
    /// in full, because block ranges of two snapshots cannot be mixed. An
    /// unlogged table is always copied again in full: a crash of the target
    /// since (crash recovery empties unlogged tables) leaves no trace in our record.
    private func remainingWork(_ parts: [CopyPart]) async throws -> (work: [CopyPart], finished: [CopyTable], clearing: Set<String>) {
        let recorded = store.parts
        var work: [CopyPart] = []
        var finished: [CopyTable] = []
        var clearing: Set<String> = []
        var emptied: [CopyTable] = []
        for (table, tableParts) in Dictionary(grouping: parts, by: \.table).sorted(by: { $0.key.name.description < $1.key.name.description }) {
            let pending = tableParts.filter { recorded[$0.key] != true }
            if report.tables.unlogged.contains(table.name) {
                events.info(
                    .restore, "copying unlogged table \(table.name) again in full: a crash of the target empties unlogged tables, "
                        + "so a resumed copy never trusts them", ["table": .string(table.name.description)])
                emptied.append(table)
                work += tableParts
            } else if pending.isEmpty {
                finished.append(table)
                events.info(
                    .restore, "skipped \(table.name): copied by the interrupted run",
                    ["table": .string(table.name.description), "skipped": .bool(true)])
            } else if tableParts.contains(where: \.isBlockRange) {
                emptied.append(table)
                work += tableParts
            } else {
                work += pending
                clearing.formUnion(pending.filter { recorded[$0.key] == false }.map(\.key))
            }
        }
        if !emptied.isEmpty {
            let target = try await target.connect(label: "resume", stage: .restore)
            defer { Task { await target.close() } }
            for table in emptied {
                if !report.tables.unlogged.contains(table.name) {
                    events.info(.restore, "copying \(table.name) again in full: it is split by blocks, which cannot be resumed part by part")
                }
                try await LockWait(server: self.target, events: events, stage: .restore, timeout: config.lockTimeout)
                    .watching("emptying \(table.name) on the target to copy it again", session: target) {
                        try await target.execute("TRUNCATE ONLY \(table.name)")
                    }
            }
            let keys = Set(emptied.flatMap { table in parts.filter { $0.table == table }.map(\.key) })
            for key in keys { try store.record(.reset, part: key) }
            // Crash recovery also resets unlogged sequences (an unlogged table's identity, PostgreSQL 15+):
            // they are set from the source again, like the rows.
            if emptied.contains(where: { report.tables.unlogged.contains($0.name) }) {
                let unlogged = Set(try await target.query(
                    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        + "WHERE c.relkind = 'S' AND c.relpersistence = 'u'"
                ).rows.map { QualifiedName(schema: $0[0]!, name: $0[1]!) })
                let sequences = report.tables.sequences.filter(unlogged.contains)
                if !sequences.isEmpty {
                    let sourceSession = try await source.connect(label: "resume", stage: .restore)
                    let result = try await SequenceSync(sequences: sequences).run(source: sourceSession, target: target)
                    await sourceSession.close()
                    if let failure = result.failures.first {
                        throw MigrationError(.restore, "cannot set the unlogged sequence \(failure.key) again: \(failure.value)")
                    }
                }
            }
        }
        return (CopyPlan.ordered(work), finished, clearing)
    }

    /// The builds whose index or constraint the interrupted run has not made yet.
    private func unbuilt(_ builds: [IndexBuild]) async throws -> [IndexBuild] {
        let target = try await target.connect(label: "resume", stage: .restore)
        defer { Task { await target.close() } }
        let existing = Set(
            try await target.query(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'i'"
            ).rows.map { QualifiedName(schema: $0[0]!, name: $0[1]!) })
        return builds.filter { build in
            guard existing.contains(QualifiedName(schema: build.table.schema, name: build.name)) else { return true }
            events.info(.restore, "skipped \(SQL.identifier(build.name)) on \(build.table): built by the interrupted run")
            return false
        }
    }

    /// One index worker: builds each index (or constraint) it is handed, on its own target session.
    private func buildIndexes(from queue: AsyncQueue<IndexBuild>, worker: Int) async throws -> [String] {
        var target: Connection?
        defer { if let target { Task { await target.close() } } }
        var tolerated: [String] = []
        while let build = await queue.next() {
            try Task.checkCancellation()
            if target == nil {
                let session = try await self.target.connect(label: "index-\(worker)", stage: .restore)
                try await session.keepAliveWhileIdle()
                try await session.execute("SET search_path = ''; SET default_tablespace = ''")
                try await session.raiseMaintenanceWorkMem(to: config.maintenanceWorkMem)
                target = session
            }
            let started = ContinuousClock.now
            do {
                // One transaction: a kill never leaves an index without its replica identity or CLUSTER mark.
                try await target!.execute((["BEGIN"] + build.statements + ["COMMIT"]).joined(separator: "; "))
            } catch let error as PostgresError {
                let message = "building \(SQL.identifier(build.name)) on \(build.table) failed: \(error)"
                guard config.allowRestoreErrors else {
                    throw MigrationError(
                        .restore, message,
                        fix: "fix the cause on the target and rerun with --resume (or remove the run's record with --mode cleanup "
                            + "and run again with --drop-target-first), "
                            + "or pass --allow-restore-errors if this index does not matter")
                }
                events.warning(.restore, message + "; continuing (--allow-restore-errors)")
                tolerated.append(message)
                continue
            }
            let seconds = (ContinuousClock.now - started).seconds
            events.info(
                .restore, "built \(SQL.identifier(build.name)) on \(build.table) in \(formatSeconds(seconds))",
                ["index": .string(build.name), "table": .string(build.table.description), "seconds": .double(seconds)])
        }
        return tolerated
    }
}

/// The `pg_restore --list` of the archive, minus the entries the native copy
/// built itself: an entry is `dumpId; tableoid oid TYPE schema name owner`,
/// and a line starting with `;` is skipped by `pg_restore --use-list`.
struct RestoreList {
    var lines: [String]

    /// `built` holds `INDEX <pg_class oid>` and `CONSTRAINT <pg_constraint oid>`:
    /// the type and the catalog (1259 pg_class, 2606 pg_constraint) are checked
    /// with the oid, which alone may repeat across catalogs.
    func excluding(_ built: Set<String>) -> [String] {
        lines.map { line in
            let fields = line.split(separator: " ", maxSplits: 4)
            guard fields.count >= 4, fields[0].hasSuffix(";") else { return line }
            let catalog = fields[3] == "INDEX" ? "1259" : fields[3] == "CONSTRAINT" ? "2606" : nil
            guard let catalog, fields[1] == catalog, built.contains("\(fields[3]) \(fields[2])") else { return line }
            return ";" + line
        }
    }
}
