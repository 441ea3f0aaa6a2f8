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

    private var source: Endpoint { Endpoint(role: .source, connectionString: config.source) }
    private var target: Endpoint { Endpoint(role: .target, connectionString: config.target) }

    /// Copies the database as of `snapshot` (online: the slot's), or of a
    /// snapshot exported here (offline). `releaseSnapshot` runs once no reader
    /// needs the snapshot any more. Returns tolerated errors.
    func run(
        snapshot given: String?, prepareTarget: () async throws -> Void, releaseSnapshot: () async -> Void
    ) async throws -> [String] {
        let dumpRestore = DumpRestore(config: config, tools: report.tools, events: events)
        let directory = try DumpDirectory.create(at: config.dumpPath)
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
            let catalog = CopyCatalog(filter: config.filter)
            let tables = try await catalog.tables(on: session)
            try Task.checkCancellation()
            if !tables.isEmpty {
                try await session.execute(
                    "LOCK TABLE " + tables.map { "ONLY \($0.name)" }.joined(separator: ", ") + " IN ACCESS SHARE MODE")
            }
            try Task.checkCancellation()
            let builds = try await catalog.indexBuilds(of: tables, on: session)
            let parts = try await plan(tables, on: session)
            try Task.checkCancellation()

            events.info(
                .dump, "dumping the schema with pg_dump (table data is streamed, not dumped)",
                ["snapshot": .string(snapshot), "path": .string(directory.root)])
            try await dumpRestore.dumpSchema(into: directory, snapshot: snapshot, excludingDataOf: tables.map(\.name))
            events.info(
                .dump, "dump finished: the schema and the small data pg_dump carries, \(formatBytes(directory.size))",
                ["bytes": .int(directory.size)])

            try await prepareTarget()
            var tolerated = try await dumpRestore.restore(section: "pre-data", from: directory.archivePath, jobs: 1)
            // Sequence values, large objects and extension configuration rows: small, and pg_dump knows them best.
            tolerated += try await dumpRestore.restore(section: "data", from: directory.archivePath, jobs: config.jobs)
            tolerated += try await copyData(parts, tables: tables, builds: builds, snapshot: snapshot)
            await release()

            let contents = try await dumpRestore.tableOfContents(of: directory.archivePath, writingTo: directory.listPath)
            let list = RestoreList(lines: contents).excluding(Set(builds.map(\.catalogOID)))
            try list.joined(separator: "\n").write(toFile: directory.listPath, atomically: true, encoding: .utf8)
            tolerated += try await dumpRestore.restore(
                section: "post-data", from: directory.archivePath, jobs: config.indexJobs, list: directory.listPath)
            return tolerated
        } catch {
            await release()
            throw error
        }
    }

    /// Splits the tables above `--split-tables-larger-than`, reading integer key bounds in the snapshot.
    private func plan(_ tables: [CopyTable], on session: Connection) async throws -> [CopyPart] {
        let plan = CopyPlan(splitBytes: config.splitTablesLargerThan)
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
    private func copyData(_ parts: [CopyPart], tables: [CopyTable], builds: [IndexBuild], snapshot: String) async throws -> [String] {
        let progress = CopyProgress(parts: parts)
        let work = AsyncQueue(parts)
        await work.close()
        let indexWork = AsyncQueue<IndexBuild>()
        let buildsByTable = Dictionary(grouping: builds, by: \.table)
        let copyWorkers = min(config.jobs, max(parts.count, 1))
        let running = Mutex(copyWorkers)
        events.info(
            .restore,
            "copying \(tables.count) table(s) in \(parts.count) part(s), \(formatBytes(progress.totalBytes)), "
                + "with \(copyWorkers) copy and \(config.indexJobs) index worker(s)",
            ["tables": .int(tables.count), "parts": .int(parts.count), "bytes": .int(progress.totalBytes),
             "jobs": .int(copyWorkers), "index_jobs": .int(config.indexJobs)])
        let reporter = Task { [events] in await progress.report(every: .seconds(2), to: events) }
        defer { reporter.cancel() }

        let tolerated = try await withThrowingTaskGroup(of: [String].self) { group in
            for worker in 0..<copyWorkers {
                group.addTask {
                    defer {
                        if running.withLock({ $0 -= 1; return $0 }) == 0 { Task { await indexWork.close() } }
                    }
                    let source = try await source.connect(label: "copy-out-\(worker)", stage: .restore)
                    let target = try await target.connect(label: "copy-in-\(worker)", stage: .restore)
                    defer { Task { await source.close(); await target.close() } }
                    try await source.keepAliveWhileIdle()
                    try await source.importSnapshot(snapshot)
                    try await target.keepAliveWhileIdle()
                    let copy = TableCopy(source: source, target: target)
                    while let part = await work.next() {
                        try Task.checkCancellation()
                        progress.started(part)
                        let result: TableCopy.Result
                        do {
                            result = try await copy.run(part) { progress.advance(part, by: $0) }
                        } catch let error as PostgresError {
                            throw MigrationError(
                                .restore, "copying \(part.label) failed: \(error)",
                                fix: "see the server's message; nothing was committed for this part")
                        }
                        if let finished = progress.finished(part, rows: result.rows) {
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
                try await session.execute("SET search_path = ''")
                target = session
            }
            let started = ContinuousClock.now
            do {
                for statement in build.statements { try await target!.execute(statement) }
            } catch let error as PostgresError {
                let message = "building \(SQL.identifier(build.name)) on \(build.table) failed: \(error)"
                guard config.allowRestoreErrors else {
                    throw MigrationError(
                        .restore, message,
                        fix: "fix the cause on the target and run again with --drop-target-first, "
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

    func excluding(_ catalogOIDs: Set<String>) -> [String] {
        lines.map { line in
            let fields = line.split(separator: " ", maxSplits: 4)
            guard fields.count >= 4, fields[0].hasSuffix(";"), ["INDEX", "CONSTRAINT"].contains(fields[3]),
                catalogOIDs.contains(String(fields[2]))
            else { return line }
            return ";" + line
        }
    }
}
