import Foundation
import PostgresClient

/// The index workers: each table's indexes and constraints, built as soon as its data is in.
extension NativeCopy {
    /// One index worker: builds each index (or constraint) it is handed, on its own target session.
    func buildIndexes(from queue: AsyncQueue<IndexBuild>, worker: Int) async throws -> [String] {
        // The session is opened with the first build: a worker that is never handed one opens none.
        guard let first = await queue.next() else { return [] }
        return try await self.target.withConnection(label: "index-\(worker)", stage: .restore) { target in
            try await target.keepAliveWhileIdle()
            try await target.execute("SET search_path = ''; SET default_tablespace = ''")
            try await target.raiseMaintenanceWorkMem(to: config.maintenanceWorkMem)
            let lockWait = LockWait(server: self.target, events: events, stage: .restore, timeout: config.lockTimeout)
            var tolerated: [String] = []
            var pending: IndexBuild? = first
            while true {
                let build: IndexBuild
                if let taken = pending {
                    (build, pending) = (taken, nil)
                } else if let taken = await queue.next() {
                    build = taken
                } else {
                    break
                }
                try Task.checkCancellation()
                let started = ContinuousClock.now
                do {
                    // One transaction: a kill never leaves an index without its replica identity or CLUSTER mark.
                    let transaction = (["BEGIN"] + build.statements + ["COMMIT"]).joined(separator: "; ")
                    try await lockWait.watching("building \(SQL.identifier(build.name)) on \(build.table)", session: target) {
                        try await target.execute(transaction)
                    }
                } catch let error as PostgresError {
                    let message = "building \(SQL.identifier(build.name)) on \(build.table) failed: \(error)"
                    guard config.allowRestoreErrors else {
                        throw MigrationError(
                            .restore, message,
                            fix:
                                "fix the cause on the target and rerun with \(Setting.resume) (or remove the run's record with \(Setting.mode) cleanup "
                                + "and run again with \(Setting.dropTargetFirst)), "
                                + "or pass \(Setting.allowRestoreErrors) if this index does not matter", underlying: error)
                    }
                    events.warning(.restore, message + "; continuing (\(Setting.allowRestoreErrors))")
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
}
