/// `--mode verify`, and verification as a step of the other modes.
struct VerifyRun {
    var config: MigrationConfig
    var events: EventEmitter
    /// The migration's resolved tables; `--mode verify` resolves them itself.
    var tables: TableSet? = nil

    /// Verify mode: compare and report; a mismatch is not an error here, the
    /// caller reads `outcome.verifyReport.matches` (the CLI exits 1).
    func run() async throws -> MigrationOutcome {
        let started = ContinuousClock.now
        do {
            let report = try await verify(stage: .verify)
            events.info(
                .complete, report.matches ? "source and target match" : "source and target differ",
                ["matches": .bool(report.matches), "problems": .int(report.problems.count)])
            return MigrationOutcome(
                mode: .verify, cutoverTriggered: false, warnings: report.problems, duration: ContinuousClock.now - started,
                verifyReport: report)
        } catch {
            throw events.cancellation(ifCancelled: error)
        }
    }

    /// Runs the comparison and reports its outcome as events; `targetSnapshot`: read the target as of it.
    func verify(
        checkSequences: Bool = true, stage: Stage = .verify, targetSnapshot: String? = nil, streamed: StreamVerification? = nil
    ) async throws -> VerifyReport {
        events.info(.verify, "comparing source and target table by table", ["jobs": .int(config.jobs)])
        let set: TableSet
        if let tables {
            set = tables
        } else {
            let source = try await config.sourceEndpoint.connect(label: "verify", stage: stage)
            set = try await TableSet.resolve(config.filter, on: source, stage: stage)
            await source.close()
        }
        let report = try await Verifier(
            source: config.source, target: config.target, tables: set, jobs: config.jobs,
            settings: config.verify, events: events, checkSequences: checkSequences, targetSnapshot: targetSnapshot,
            streamed: streamed?.results ?? [:]
        ).run()
        // The tables verified are the tables migrated: each one compared, or reported missing on the target.
        let verified = report.tables.count + report.missingOnTarget.count
        guard verified == set.tables.count else {
            throw MigrationError(
                stage,
                "verify compared \(verified) table(s) but the migration carries \(set.tables.count): "
                    + "a table was dropped or renamed on the source during the run",
                fix: "find the table that changed (DDL is not migrated while a migration runs), then verify again")
        }
        let bytes = report.tables.reduce(0) { $0 + $1.bytes }
        let rate = report.seconds > 0 ? Double(bytes) / report.seconds : 0
        events.emit(
            MigrationEvent(
                stage: .verify, level: report.matches ? .info : .error,
                message: report.matches
                    ? "\(report.tables.count) table(s) match (\(report.tables.reduce(0) { $0 + $1.sourceRows }) rows, \(formatBytes(bytes)) in \(formatSeconds(report.seconds)))"
                    : "\(report.problems.count) difference(s) between source and target",
                detail: [
                    "tables": .int(report.tables.count), "seconds": .double(report.seconds), "bytes": .int(bytes),
                    "bytes_per_second": .double(rate),
                    "problems": .list(report.problems),
                ]))
        return report
    }

    /// After an offline restore: strict fails the run on a mismatch, warn reports it. `streamed`: what the
    /// copy verified as it went.
    func afterMigration(streamed: StreamVerification? = nil) async throws -> VerifyReport? {
        guard config.verify.mode != .off else { return nil }
        guard config.dumpScope != .schemaOnly else {
            events.info(.verify, "skipped: a schema-only copy has no rows or sequence values to compare")
            return nil
        }
        let report = try await verify(streamed: streamed)
        if !report.matches && config.verify.mode == .strict {
            throw MigrationError(
                .verify, "the target differs from the source: " + report.problems.prefix(10).joined(separator: "; "),
                fix: "see the Verify events for every difference; \(Setting.verifyMode) warn reports without failing", code: .verifyMismatch
            )
        }
        return report
    }
}
