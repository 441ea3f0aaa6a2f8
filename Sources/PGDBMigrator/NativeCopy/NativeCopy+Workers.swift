import Foundation
import PostgresClient

/// The copy workers: each takes the next part, largest first, and streams it from the source into the target.
extension NativeCopy {
    /// Runs the copy workers and the index workers together; returns tolerated index errors.
    /// `binary`: the tables copied in binary; `digesting`: the tables verified as they are copied, and how.
    func copyData(
        _ parts: [CopyPart], builds: [IndexBuild], snapshot: String, resuming: Bool, binary: Set<QualifiedName>,
        digesting: [QualifiedName: StreamVerification.Method]
    ) async throws -> [String] {
        let (work, finishedTables, clearing) = try await resuming ? remainingWork(parts) : (parts, [], [])
        var pendingBuilds = builds
        if resuming { pendingBuilds = try await unbuilt(builds) }
        let progress = CopyProgress(parts: work)
        let queue = AsyncQueue(work)
        await queue.close()
        let indexWork = AsyncQueue<IndexBuild>()
        let buildsByTable = Dictionary(grouping: pendingBuilds, by: \.table)
        for table in finishedTables { for build in buildsByTable[table.name] ?? [] { await indexWork.append(build) } }
        // Verify rides along for the tables this run copies in full: their target copy is read back once loaded.
        let readBackWork = AsyncQueue<CatalogTable>()
        let partCounts = Dictionary(grouping: parts, by: \.table.name).mapValues(\.count)
        let streamedTables = Set(Dictionary(grouping: work, by: \.table.name).filter { $0.value.count == partCounts[$0.key] }.keys)
            .intersection(digesting.keys)
        let readBackWorkers = streamedTables.isEmpty ? 0 : config.jobs
        let copyWorkers = min(config.jobs, max(work.count, 1))
        let running = Mutex(copyWorkers)
        let tableCount = Set(work.map(\.table)).count
        events.info(
            .restore,
            "copying \(tableCount) table(s) in \(work.count) part(s), \(formatBytes(progress.totalBytes)), "
                + "with \(copyWorkers) copy and \(config.indexJobs) index worker(s)",
            [
                "tables": .int(tableCount), "parts": .int(work.count), "bytes": .int(progress.totalBytes),
                "jobs": .int(copyWorkers), "index_jobs": .int(config.indexJobs),
            ])
        let reporter = Task { [events] in await progress.report(every: .seconds(2), to: events) }
        defer { reporter.cancel() }

        let tolerated = try await withThrowingTaskGroup(of: [String].self) { group in
            for worker in 0..<copyWorkers {
                group.addTask {
                    defer {
                        if running.withLock({
                            $0 -= 1; return $0
                        }) == 0 {
                            reporter.cancel()
                            Task {
                                await indexWork.close()
                                await readBackWork.close()
                            }
                        }
                    }
                    return try await self.source.withConnection(label: "copy-out-\(worker)", stage: .restore) { source in
                        try await self.target.withConnection(label: "copy-in-\(worker)", stage: .restore) { target in
                            for session in [source, target] {
                                try await session.keepAliveWhileIdle()
                                try await session.pinTextFormats(encoding: report.sourceDatabase.encoding)
                            }
                            try await source.importSnapshot(snapshot)
                            let copy = TableCopy(source: source, target: target, binaryTables: binary)
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
                                        try await copy.run(
                                            part, clearing: clear,
                                            digesting: streamedTables.contains(part.table.name) ? digesting[part.table.name] : nil
                                        ) {
                                            progress.advance(part, by: $0)
                                        }
                                    }
                                } catch let error as PostgresError where error.sqlState == "55P03" {  // lock_not_available
                                    throw MigrationError(
                                        .restore, "cannot lock \(part.table.name) on the source without waiting: \(error.message)",
                                        fix: "another session is waiting to change that table (DDL); let it finish or stop it, "
                                            + "then rerun the same command with \(Setting.resume)", code: .lockTimeout, underlying: error)
                                } catch let error as PostgresError {
                                    throw MigrationError(
                                        .restore, "copying \(part.label) failed: \(error)",
                                        fix: "nothing was committed for this part; once the cause is fixed, rerun the same command "
                                            + "with \(Setting.resume) to carry on from the parts already copied", underlying: error)
                                }
                                try store.record(.committed, part: part.key)
                                if let digest = result.digest { streamed?.add(digest, of: part.table.name) }
                                if let finished = progress.finished(part, rows: result.rows, binary: result.binary) {
                                    events.info(.restore, finished.message, finished.detail)
                                    for build in buildsByTable[part.table.name] ?? [] { await indexWork.append(build) }
                                    if streamedTables.contains(part.table.name) { await readBackWork.append(part.table) }
                                }
                            }
                            return []
                        }
                    }
                }
            }
            for worker in 0..<config.indexJobs {
                group.addTask { try await buildIndexes(from: indexWork, worker: worker) }
            }
            for worker in 0..<readBackWorkers {
                group.addTask {
                    try await readBack(from: readBackWork, worker: worker, binary: binary) { running.withLock { $0 } > 0 }
                }
            }
            var tolerated: [String] = []
            for try await errors in group { tolerated += errors }
            return tolerated
        }
        let summary = progress.summary
        events.status.observeCopy(progress.current.detail)  // every table done, without another progress line
        events.info(.restore, summary.message, summary.detail)
        return tolerated
    }
}

extension NativeCopy {
    /// A read-back worker: digests each loaded table's target copy, in the format its parts were copied in.
    ///
    /// While `copying`, its scans take no parallel workers: the copy and index sessions already keep the
    /// target's cores busy, and a parallel scan only adds its workers' start and hand-over (the sums of four
    /// 125 MB tables took 0.73 s of CPU so, 0.62 s without). The tables read back after the last copy get them.
    private func readBack(
        from queue: AsyncQueue<CatalogTable>, worker: Int, binary: Set<QualifiedName>, copying: @escaping @Sendable () -> Bool
    ) async throws -> [String] {
        guard let streamed, let first = await queue.next() else { return [] }
        try await target.withConnection(label: "verify-\(worker)", stage: .restore) { target in
            try await target.keepAliveWhileIdle()
            try await target.pinTextFormats(encoding: report.sourceDatabase.encoding)
            var serial = false
            var table: CatalogTable? = first
            while let current = table {
                try Task.checkCancellation()
                if copying() != serial {
                    serial.toggle()
                    try await target.execute(serial ? "SET max_parallel_workers_per_gather = 0" : "RESET max_parallel_workers_per_gather")
                }
                try await streamed.readBack(current, binary: binary.contains(current.name), on: target)
                table = await queue.next()
            }
        }
        return []
    }
}
