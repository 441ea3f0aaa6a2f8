import Foundation
import PostgresClient

/// Validate → PrepareSnapshot → Dump → Restore → StreamApply → Lag … → CaughtUp → Cutover → Complete.
struct OnlineMigration {
    var config: MigrationConfig
    var events: EventEmitter
    var cutover: CutoverHandle
    var settings: OnlineSettings { config.online }
    private let leftovers = Leftovers()
    /// Where the slot guard reports a slot the source has invalidated, and relay apply its failure: that ends the run.
    private let slotLost = AsyncQueue<MigrationError>()
    private let relay = RelayRun()

    init(config: MigrationConfig, events: EventEmitter, cutover: CutoverHandle) {
        self.config = config
        self.events = events
        self.cutover = cutover
    }

    /// The migration, raced against the slot guard: a slot the source
    /// invalidates cancels whatever is running (copy, streaming, cutover) and
    /// ends the run with the guard's error.
    func run() async throws -> MigrationOutcome {
        try await withThrowingTaskGroup(of: MigrationOutcome?.self) { group in
            group.addTask { try await runUnguarded() }
            group.addTask {
                if let lost = await slotLost.next() { throw lost }
                return nil
            }
            defer { group.cancelAll() }
            while let result = try await group.next() {
                if let outcome = result { return outcome }
            }
            throw CancellationError()
        }
    }

    private func runUnguarded() async throws -> MigrationOutcome {
        let started = ContinuousClock.now
        var slot: ReplicationSlot?
        var slotGuard: Task<Void, Never>?
        defer { slotGuard?.cancel() }
        do {
            events.info(.validate, "checking source and target")
            if settings.forceClean { try await ForceClean(config: config, events: events).run() }
            let store = try RunStateStore.open(for: config)
            leftovers.record(in: store)
            let recorded = store.current
            let plan = ResumePlan.decide(resume: config.resume, mode: .online, recorded: recorded)
            switch plan {
            case .finishTeardown(let barrier):
                return try await finishCutover(at: barrier, store: store, started: started)
            case .reattach:
                slotGuard = startSlotGuard()
                return try await reattach(store: store, started: started)
            case .restartOnlineCopy(let recreateTarget):
                // The exported snapshot lived in the killed process: a copy cannot go on from it. The slot and
                // subscription the interrupted run created go (a subscription carries its mark even when the run
                // died before recording it); a slot of that name it did not record is refused by Validate below.
                _ = try await Subscription.remove(for: config, runID: recorded.runID)
                // Relay apply's position belonged to the old slot: streaming from it through the new one would skip changes.
                if let origin = recorded.online.relayOrigin {
                    try await config.targetEndpoint.withConnection(label: "resume") {
                        try await RelayApplier.dropOrigin(
                            origin, on: $0, timeout: config.lockTimeout, stage: events.currentPhase, events: events)
                    }
                    leftovers.set(\.relayOrigin, nil)
                }
                if recorded.ownsSlot(named: settings.slotName) {
                    let source = try await config.sourceEndpoint.connect()
                    _ = try await ReplicationSlot.drop(named: settings.slotName, on: source, timeout: config.lockTimeout, events: events)
                    await source.close()
                }
                events.warning(
                    .validate,
                    "resuming: the interrupted run died during the copy, and its snapshot died with it; the copy starts again "
                        + "from a new replication slot" + (recreateTarget ? " (the target database is made again)" : ""))
                leftovers.set(\.slotCreated, false)
                leftovers.set(\.subscriptionCreated, false)
                // A --dump-path the killed run left full is ours to empty (the copy below creates it again).
                if let path = config.dumpPath { try DumpDirectory.create(at: path, reclaiming: true).remove() }
                store.forgetCopy()
                try store.update {
                    $0.copy = RunState.CopyState()
                    $0.tables = nil  // a copy from scratch: the tables are resolved anew
                }
            default:
                break
            }
            return try await copyAndStream(plan: plan, store: store, started: started, slot: &slot, slotGuard: &slotGuard)
        } catch {
            await relay.stop()
            await slot?.releaseSnapshot()
            let error = events.cancellation(ifCancelled: error)
            await leaveResumable()
            throw error
        }
    }

    private func copyAndStream(
        plan: ResumePlan, store: RunStateStore, started: ContinuousClock.Instant, slot: inout ReplicationSlot?,
        slotGuard: inout Task<Void, Never>?
    ) async throws -> MigrationOutcome {
        var findings: OnlinePreflight.Findings?
        let report = try await Preflight(config: config, events: events, resumePlan: plan).run { source, target, tables in
            findings = try await OnlinePreflight(config: config, events: events, runID: store.current.runID)
                .run(source: source, target: target, tables: tables)
        }
        guard let findings else { preconditionFailure("the online checks ran") }
        let publicationExists = findings.publicationExists
        try store.checkTables(report.tables, of: config)

        // PrepareSnapshot: the publication first (pgoutput reads it as of each change), then the slot.
        let source = try await config.sourceEndpoint.connect(label: "source-control", stage: .prepareSnapshot)
        let publication = Publication(name: settings.publication, runID: store.current.runID)
        if publicationExists {
            // This run's own (a resumed copy, killed before it could record creating it): dropped at cutover.
            if try await publication.owner(on: source) == .thisRun { leftovers.set(\.publicationCreated, true) }
            events.info(.prepareSnapshot, "using the existing publication \(SQL.identifier(settings.publication))")
        } else {
            try await publication.create(on: source, tables: report.tables)
            leftovers.set(\.publicationCreated, true)
            events.info(.prepareSnapshot, "created publication \(SQL.identifier(settings.publication))")
        }
        // Creating the slot waits for every transaction already writing: said every 10 s, naming them.
        let began = try await source.scalar("SELECT clock_timestamp()::text") ?? "now"
        try leftovers.setDurably(\.sourceIdentity, try await SourceIdentity.read(on: source))
        events.info(
            .prepareSnapshot,
            "creating replication slot \(SQL.identifier(settings.slotName)); this waits for transactions already writing on the source to finish"
        )
        let newSlot = try await LockWait(
            server: config.sourceEndpoint, events: events, stage: .prepareSnapshot, timeout: config.lockTimeout
        )
        .watching("creating the replication slot", blockers: .transactions(olderThan: began)) { [config, settings] in
            try await ReplicationSlot.create(named: settings.slotName, on: config.source)
        }
        slot = newSlot
        leftovers.set(\.slotCreated, true)
        slotGuard = startSlotGuard()
        events.info(
            .prepareSnapshot,
            "created replication slot \(SQL.identifier(settings.slotName)) at \(newSlot.consistentPoint) with snapshot \(newSlot.snapshotName)",
            [
                "slot": .string(settings.slotName), "consistent_lsn": .string(newSlot.consistentPoint.description),
                "snapshot": .string(newSlot.snapshotName),
            ])

        // The copy, as of the slot's snapshot.
        let copy = DatabaseCopy(config: config, report: report, events: events, store: store, resumePlan: plan)
        let warnings = try await copy.run(snapshot: newSlot.snapshotName) { await newSlot.releaseSnapshot() }

        // StreamApply: the target's own apply worker takes over from the slot, or this process relays its changes.
        let target = try await config.targetEndpoint.connect(label: "target-control", stage: .streamApply)
        if let subscriptionSource = findings.subscriptionSource {
            try await subscription(runID: store.current.runID).create(on: target, connectingTo: subscriptionSource, events: events)
            leftovers.set(\.subscriptionCreated, true)
            events.emit(
                MigrationEvent(
                    stage: .streamApply, kind: .streaming,
                    message: "subscription \(SQL.identifier(settings.subscriptionName)) created; the target is streaming changes",
                    detail: ["subscription": .string(settings.subscriptionName)]))
        } else {
            try leftovers.setDurably(\.relayOrigin, settings.relayOrigin)
            startRelay()
            events.emit(
                MigrationEvent(
                    stage: .streamApply, kind: .streaming,
                    message: "relay apply started: this process streams the slot's changes into the target",
                    detail: ["relay_origin": .string(settings.relayOrigin)]))
        }
        return try await streamAndCutOver(
            applying: findings.apply, source: source, target: target, report: report, store: store, started: started, warnings: warnings)
    }

    /// `--resume` of a run that died while streaming: the slot kept every
    /// change since, so enabling the subscription again carries on where it stopped.
    private func reattach(store: RunStateStore, started: ContinuousClock.Instant) async throws -> MigrationOutcome {
        events.info(
            .validate,
            "resuming the interrupted run recorded in \(store.path): it was streaming; re-attaching to its slot and subscription",
            ["state": .string(store.path)])
        let report = try await Preflight(config: config, events: events, resumePlan: .reattach).run()
        try store.checkTables(report.tables, of: config)
        let source = try await config.sourceEndpoint.connect(label: "source-control", stage: .streamApply)
        let fix = "start over: \(Cleanup.command(for: config)), then run again with \(Setting.dropTargetFirst)"
        let reading = try await SlotGuard.read(slot: settings.slotName, on: source)
        if let loss = SlotLoss.describe(slot: settings.slotName, exists: reading != nil, walStatus: reading?.walStatus) {
            throw MigrationError(.streamApply, loss, fix: fix, code: .slotLost)
        }
        guard let reading else { preconditionFailure("a slot that exists was read") }
        let target = try await config.targetEndpoint.connect(label: "target-control", stage: .streamApply)
        let relaying = leftovers.snapshot.relayOrigin != nil
        if !relaying, try await !subscription().exists(on: target, inDatabase: config.targetEndpoint.databaseName) {
            throw MigrationError(
                .streamApply, "the subscription \(SQL.identifier(settings.subscriptionName)) no longer exists on the target", fix: fix)
        }
        // The interrupted cutover froze the source and never finished: writes resume until the next cutover.
        let frozen = leftovers.snapshot.frozenDatabase
        let freeze = SourceFreeze(database: config.sourceEndpoint.databaseName, runID: leftovers.runID)
        let hadTriggers = try await freeze.unfreeze(on: source, resetSetting: frozen != nil)
        leftovers.set(\.frozenDatabase, nil)
        if frozen != nil || hadTriggers {
            events.warning(
                .streamApply,
                "the interrupted cutover had frozen the source database \(SQL.identifier(freeze.database)); it accepts writes again")
        }
        // A crash of the target since the copy emptied its unlogged tables, and nothing streams them: they
        // are copied again (as of now, as the copy had them as of its snapshot), never left empty.
        try await config.sourceEndpoint.withConnection(label: "unlogged", stage: .streamApply) { sourceCopy in
            try await config.targetEndpoint.withConnection(label: "unlogged", stage: .streamApply) { targetCopy in
                try await NonReplicatedData(tables: report.tables.unloggedTables, events: events, stage: .streamApply)
                    .copy(source: sourceCopy, target: targetCopy)
            }
        }
        guard !relaying else {
            startRelay()
            events.emit(
                MigrationEvent(
                    stage: .streamApply, kind: .streaming,
                    message: "re-attached: relay apply carries on from where the target durably got, streaming from slot "
                        + "\(SQL.identifier(settings.slotName)), which holds \(formatBytes(Int(reading.retainedBytes))) of WAL",
                    detail: ["relay_origin": .string(settings.relayOrigin), "retained_wal_bytes": .int(Int(reading.retainedBytes))]))
            return try await streamAndCutOver(
                applying: .relay, source: source, target: target, report: report, store: store, started: started, warnings: [])
        }
        try await subscription().enable(on: target)
        events.emit(
            MigrationEvent(
                stage: .streamApply, kind: .streaming,
                message:
                    "re-attached: subscription \(SQL.identifier(settings.subscriptionName)) enabled, streaming from slot \(SQL.identifier(settings.slotName)), "
                    + "which holds \(formatBytes(Int(reading.retainedBytes))) of WAL",
                detail: ["subscription": .string(settings.subscriptionName), "retained_wal_bytes": .int(Int(reading.retainedBytes))]))
        return try await streamAndCutOver(
            applying: .subscription, source: source, target: target, report: report, store: store, started: started, warnings: [])
    }

    /// `--resume` of a run killed after its cutover had applied everything up
    /// to the barrier and synced sequences: only the teardown is left.
    private func finishCutover(at barrier: LSN, store: RunStateStore, started: ContinuousClock.Instant) async throws -> MigrationOutcome {
        events.info(
            .cutover,
            "resuming: the interrupted run's cutover had applied everything up to barrier \(barrier) and synced the sequences; "
                + "removing the replication objects it left", ["barrier_lsn": .string(barrier.description)])
        let source = try await config.sourceEndpoint.connect(label: "source-control", stage: .cutover)
        let target = try await config.targetEndpoint.connect(label: "target-control", stage: .cutover)
        try await ReplicationTeardown(config: config, events: events, leftovers: leftovers).run(source: source, target: target)
        await source.close()
        await target.close()
        return try complete(at: barrier, started: started, store: store, warnings: [], sequenceFailures: nil)
    }

    /// Complete: the recorded progress is removed and the outcome reported, with
    /// the SQL that undoes a freeze when the source stays read-only.
    private func complete(
        at barrier: LSN, started: ContinuousClock.Instant, store: RunStateStore, warnings: [String], sequenceFailures: [String: String]?,
        verified: VerifyReport? = nil
    ) throws -> MigrationOutcome {
        let rolesCreated = store.current.copy.rolesCreated ?? []
        store.finish()
        let duration = ContinuousClock.now - started
        // The setting is in the undo only when this run set it: a DBA's own read-only setting stays.
        let undo =
            settings.freezeSourceAtCutover
            ? SourceFreeze(database: config.sourceEndpoint.databaseName).undoSQL(
                resettingReadOnly: leftovers.snapshot.frozenDatabase != nil) : nil
        var detail: [String: EventValue] = ["barrier_lsn": .string(barrier.description), "seconds": .double(duration.seconds)]
        if let sequenceFailures { detail["sequences_failed"] = .int(sequenceFailures.count) }
        if let undo { detail["undo_freeze"] = .string(undo) }
        // Kept on purpose, and from now on no run's to drop: removing them is the operator's explicit act.
        var kept: [String] = []
        if settings.keepSubscription {
            kept.append(
                "subscription \(SQL.identifier(settings.subscriptionName)) on the target (disabled; remove with: \(subscription().removalSQL))"
            )
        }
        if settings.keepSlot {
            kept.append(
                "replication slot \(SQL.identifier(settings.slotName)) on the source (it retains WAL until dropped; remove with: "
                    + "\(Cleanup.command(for: config)) \(Setting.dropForeignSlot) \(settings.slotName))")
        }
        if !kept.isEmpty { detail["kept"] = .list(kept) }
        if !rolesCreated.isEmpty { detail["roles_created"] = .list(rolesCreated) }
        if let verified, !verified.matches {
            // The switch is done: nothing is undone, and the source stays frozen (unchanged, it is the reference).
            let message =
                "after the switch, verify found \(verified.problems.count) difference(s) between the frozen source and the target "
                + "as of barrier \(barrier): " + verified.problems.prefix(10).joined(separator: "; ")
            let fix =
                "the source stays frozen and unchanged: copy the differing tables (or ranges) from it again before writing to "
                + "them on the target, or send writes back to the source and undo the freeze: "
                + (undo ?? SourceFreeze(database: config.sourceEndpoint.databaseName).undoSQL(resettingReadOnly: false))
            guard config.verify.mode == .warn else {
                throw MigrationError(.verify, message, fix: fix, code: .verifyMismatch)
            }
            events.warning(.complete, "cutover done, but " + message + " — " + fix, detail)
            return MigrationOutcome(
                mode: .online, cutoverTriggered: true, warnings: warnings + verified.problems, duration: duration, barrierLSN: barrier,
                sequenceFailures: sequenceFailures ?? [:], verifyReport: verified)
        }
        // A sequence left behind would hand out used values on the new primary: not a complete migration.
        let unsynced = (sequenceFailures ?? [:]).keys.sorted()
        events.emit(
            MigrationEvent(
                stage: .complete, level: unsynced.isEmpty ? .info : .warning,
                message: (unsynced.isEmpty
                    ? "migration complete: every transaction committed on the source before \(barrier) is on the target"
                    : "cutover done: every transaction committed on the source before \(barrier) is on the target, but "
                        + "\(unsynced.count) sequence(s) could not be synced (\(unsynced.joined(separator: ", "))): set them on the "
                        + "target with setval() before writing to their tables")
                    + (undo.map { "; the source database stays read-only, undo with: \($0)" } ?? "")
                    + (kept.isEmpty ? "" : "; kept as asked: " + kept.joined(separator: "; "))
                    + (rolesCreated.isEmpty ? "" : "; roles created on the target: " + rolesCreated.joined(separator: ", ")),
                detail: detail))
        return MigrationOutcome(
            mode: .online, cutoverTriggered: true, warnings: warnings, duration: duration, barrierLSN: barrier,
            sequenceFailures: sequenceFailures ?? [:], verifyReport: verified)
    }

    private func subscription(runID: String? = nil) -> Subscription {
        Subscription(name: settings.subscriptionName, slotName: settings.slotName, publication: settings.publication, runID: runID)
    }

    /// Starts relay apply; its failure ends the run.
    private func startRelay() {
        let applier = RelayApplier(
            source: config.source, target: config.target, slot: settings.slotName, publication: settings.publication,
            origin: settings.relayOrigin,
            // In the run's own state directory (on disk, locked to this run), not a /tmp that may live in memory.
            spoolDirectory: (RunStateStore.directory(for: config) as NSString).appendingPathComponent("relay-transactions"),
            onReconnect: { [events] reason, delay in
                events.warning(events.currentPhase, "relay apply lost a connection (\(reason)); reconnecting in \(delay)")
            }, sessions: settings.relaySessions)
        relay.start(applier) { [slotLost] error in await slotLost.append(error) }
    }

    private func startSlotGuard() -> Task<Void, Never> {
        Task { [config, events, slotLost] in
            let lost = await SlotGuard(
                source: config.source, slotName: config.online.slotName, limit: config.online.maxRetainedWALBytes,
                interval: config.online.pollInterval, events: events
            ).watch()
            if let lost {
                await slotLost.append(
                    MigrationError(
                        events.currentPhase, lost,
                        fix: "remove what is left with \(Cleanup.command(for: config)), then start over with \(Setting.dropTargetFirst); "
                            + "to keep it from happening again, raise max_slot_wal_keep_size on the source or make the copy faster"))
            }
        }
    }

    /// From here the run goes on as `method` applies (the one Validate chose, or the one a resumed run recorded).
    private func streamAndCutOver(
        applying method: OnlineSettings.ApplyMethod, source: Connection, target: Connection, report: PreflightReport,
        store: RunStateStore, started: ContinuousClock.Instant, warnings: [String]
    ) async throws -> MigrationOutcome {
        var run = self
        run.config.online.apply = method
        return try await run.streamAndCutOver(
            source: source, target: target, report: report, store: store, started: started, warnings: warnings)
    }

    /// StreamApply → Lag … → Cutover → Complete, shared by a fresh run and a resumed one.
    private func streamAndCutOver(
        source: Connection, target: Connection, report: PreflightReport, store: RunStateStore, started: ContinuousClock.Instant,
        warnings: [String]
    ) async throws -> MigrationOutcome {
        // Statistics are refreshed beside the stream: a slow or blocked ANALYZE must not hold up the heartbeat or a cutover.
        // A failed ANALYZE (say the target restarted meanwhile) costs statistics, not data: a warning.
        // Its events are Analyze events that do not move the phase: the run is streaming meanwhile.
        let backgroundCopy = DatabaseCopy(config: config, report: report, events: events.background, store: store, resumePlan: .fresh)
        async let analyzed: Void = {
            do {
                try await backgroundCopy.analyze()
            } catch is CancellationError {
            } catch {
                events.background.warning(.analyze, "ANALYZE of the target failed (\(error)); run it on the target after cutover")
            }
        }()

        let sessions = ControlSessions(source: source, target: target, config: config, events: events)
        let result: Cutover.Result
        do {
            try await heartbeat(sessions, tables: report.tables)
            events.info(.cutover, "cutover requested")
            result = try await Cutover(
                config: config, events: events, sessions: sessions, leftovers: leftovers, tables: report.tables,
                stopRelay: { [relay] in await relay.stop() }
            ).run()
        } catch {
            await sessions.close()
            throw error
        }
        await sessions.close()
        // Now that nothing is applied any more: the source database's settings (not the freeze's own), comment,
        // privileges, owner and connection limit.
        try await DatabaseProperties.carry(
            config: config, events: events, stage: .cutover,
            skippingSettings: leftovers.snapshot.frozenDatabase == nil ? [] : ["default_transaction_read_only"])
        var steps = result.steps
        steps.lap("database_properties")
        let writesHeld = result.frozenSince.map { (ContinuousClock.now - $0).seconds }
        var ready: [String: EventValue] = [
            "barrier_lsn": .string(result.barrier.description), "cutover_steps_seconds": .list(steps.described),
        ]
        if let writesHeld { ready["write_downtime_seconds"] = .double(writesHeld) }
        events.emit(
            MigrationEvent(
                stage: .cutover, kind: .targetReady,
                message: "the target is ready for writes: every transaction committed on the source before \(result.barrier) is on it"
                    + (writesHeld.map { "; writes were held for \(formatSeconds($0))" } ?? ""),
                detail: ready))
        // The proof comes after the switch: the source stays frozen, the target is read as of the barrier.
        var verified: VerifyReport?
        if let snapshot = result.targetSnapshot {
            do {
                verified = try await VerifyRun(config: config, events: events, tables: report.tables)
                    .verify(checkSequences: false, targetSnapshot: snapshot.name)
                await snapshot.release()
            } catch {
                await snapshot.release()
                throw error
            }
        }
        await analyzed
        return try complete(
            at: result.barrier, started: started, store: store, warnings: warnings, sequenceFailures: result.sequences.failures,
            verified: verified)
    }

    /// Lag events every poll interval (faster once within the threshold) until cutover is requested.
    private func heartbeat(_ sessions: ControlSessions, tables: TableSet) async throws {
        let monitor = settings.lagMonitor
        var machine = LagStateMachine(threshold: settings.lagThresholdBytes.map { .bytes($0) } ?? .seconds(settings.lagThresholdSeconds))
        var pace = HeartbeatPace(interval: settings.pollInterval, everyReading: settings.everyLagReading)
        var health = ApplyHealth(grace: settings.applyFailureGrace)
        var previous: (reading: LagReading, at: ContinuousClock.Instant)?
        var estimate = DowntimeEstimate(
            freezing: settings.freezeSourceAtCutover, tables: tables.tables.count,
            sequences: settings.syncSequences ? tables.sequences.count : 0)
        let flushDelay = try await sessions.retrying { _, target in
            try await target.scalar("SELECT setting::float8 / 1000 FROM pg_settings WHERE name = 'wal_writer_delay'")
        }
        if let flushDelay = flushDelay.flatMap(Double.init) { estimate.flushDelay = flushDelay }
        // At least one reading, so the state at cutover is on record even when it was requested at once.
        repeat {
            try Task.checkCancellation()
            let asked = ContinuousClock.now
            let reading = try await sessions.retrying { try await monitor.read(source: $0, target: $1) }
            let now = ContinuousClock.now
            var detail = reading.detail
            // The apply rate since the last reading, and how long the target would take to catch up at it.
            var rate: Double?
            if let previous, now > previous.at {
                rate = Double(reading.appliedLSN.bytes(since: previous.reading.appliedLSN)) / (now - previous.at).seconds
                detail["apply_rate_bytes_per_second"] = .double(rate!)
            }
            let catchUp = reading.lagBytes == 0 ? 0 : rate.flatMap { $0 > 0 ? Double(reading.lagBytes) / $0 : nil }
            if let catchUp { detail["catch_up_estimate_seconds"] = .double(catchUp) }
            let downtime = estimate.seconds(lagSeconds: reading.lagSeconds, catchUpSeconds: catchUp, roundTrip: now - asked)
            detail["write_downtime_estimate_seconds"] = .double(downtime)
            previous = (reading, now)
            let behind = "\(reading.lagBytes) bytes" + (reading.lagSeconds.map { ", \(formatSeconds($0))" } ?? "")
            let transition = machine.observe(lagBytes: reading.lagBytes, lagSeconds: reading.lagSeconds)
            events.status.observe(
                lag: MigrationStatus.Lag(
                    bytes: Int(reading.lagBytes), seconds: reading.lagSeconds, applyRateBytesPerSecond: rate,
                    catchUpEstimateSeconds: catchUp, caughtUp: machine.caughtUp),
                notReady: machine.caughtUp ? [] : ["the target is \(behind) behind; ready once within \(machine.threshold)"],
                downtimeEstimate: downtime)
            if pace.shouldReport(lagBytes: reading.lagBytes, caughtUp: machine.caughtUp && transition == nil, now: now) {
                events.info(
                    .lag,
                    "replication lag \(behind) (source LSN \(reading.sourceLSN), received LSN \(reading.receivedLSN?.description ?? "none"), applied LSN \(reading.appliedLSN))",
                    detail)
            }
            switch transition {
            case .caughtUp:
                events.info(.caughtUp, "target caught up with source (lag \(behind)) — ready for cutover", detail)
            case .fellBehind:
                events.warning(.fellBehind, "target fell behind (lag \(behind))", detail)
            case nil:
                break
            }
            if settings.apply != .relay {
                try await checkApplyWorker(reading, health: &health, target: await sessions.current.target)
            }

            let interval = machine.caughtUp ? settings.fastPollInterval : settings.pollInterval
            let wakeUp = ContinuousClock.now + interval
            while ContinuousClock.now < wakeUp && !cutover.isRequested {
                try await Task.sleep(for: min(.milliseconds(100), wakeUp - ContinuousClock.now))
            }
        } while !cutover.isRequested
        events.status.update { $0.cutover.state = "requested" }
    }

    /// An apply worker that keeps failing (a conflict on the target, the
    /// source unreachable from the target) ends the run with the server's
    /// reason instead of printing lag forever.
    private func checkApplyWorker(_ reading: LagReading, health: inout ApplyHealth, target: Connection) async throws {
        switch health.observe(
            errors: reading.applyErrors, workerRunning: reading.workerRunning, applied: reading.appliedLSN,
            caughtUp: reading.lagBytes == 0)
        {
        case .healthy:
            return
        case .newErrors(let count):
            events.emit(
                MigrationEvent(
                    stage: .streamApply, level: .error,
                    message: "the target's apply worker reported an error (\(count) so far); PostgreSQL retries it",
                    detail: ["apply_errors": .int(count)]))
        case .failing(let duration):
            // The worker may be between its error and writing it (or restarting): give the log a few seconds.
            var serverError = await ServerLog.lastApplyError(of: settings.subscriptionName, on: target)
            for _ in 0..<10 where serverError == nil {
                try await Task.sleep(for: .milliseconds(500))
                serverError = await ServerLog.lastApplyError(of: settings.subscriptionName, on: target)
            }
            throw MigrationError(
                .streamApply,
                "the target's apply worker for \(SQL.identifier(settings.subscriptionName)) has been failing for \(Int(duration.seconds)) s "
                    + "without applying anything" + (serverError.map { ": \($0)" } ?? " (the reason is in the target's server log)"),
                fix: "fix the cause on the target (a conflicting row, a missing table, the source unreachable from the target: "
                    + "see \(Setting.subscriptionSource)), then ALTER SUBSCRIPTION \(SQL.identifier(settings.subscriptionName)) ENABLE "
                    + "to resume; nothing has been dropped")
        }
    }

    /// After a failure or abort: undo a freeze, disable the subscription so
    /// nothing more is applied, keep the slot (it holds every change not yet
    /// applied), and say what was left and how to resume or clean up.
    private func leaveResumable() async {
        let state = leftovers.snapshot
        if state.cutoverBarrier != nil && (settings.freezeSourceAtCutover || state.frozenDatabase != nil) {
            // The cutover had applied everything and synced the sequences: the target is the new primary.
            // Writes to the old one now would reach no one, so it stays frozen.
            events.warning(
                .cutover,
                "the source database \(SQL.identifier(config.sourceEndpoint.databaseName)) stays frozen: the cutover had applied "
                    + "everything up to barrier \(state.cutoverBarrier ?? "?") on the target")
        } else if settings.freezeSourceAtCutover || state.frozenDatabase != nil {
            // Our triggers go (they carry this run's mark); the read-only setting only if this run set it.
            let freeze = SourceFreeze(database: config.sourceEndpoint.databaseName, runID: leftovers.runID)
            do {
                let source = try await config.sourceEndpoint.connect(label: "abort")
                let undone = try await freeze.unfreeze(on: source, resetSetting: state.frozenDatabase != nil)
                await source.close()
                // Undone: from now on a read-only setting on that database is not this run's to touch.
                leftovers.set(\.frozenDatabase, nil)
                if undone { events.info(.cutover, "the source database \(SQL.identifier(freeze.database)) accepts writes again") }
            } catch {
                events.emit(
                    MigrationEvent(
                        stage: .cutover, level: .error,
                        message:
                            "could not undo the freeze of the source database (\(error)); run on the source: \(freeze.undoSQL(resettingReadOnly: state.frozenDatabase != nil))"
                    ))
            }
        }
        if state.subscriptionCreated, let target = try? await config.targetEndpoint.connect(label: "abort") {
            try? await Subscription(name: settings.subscriptionName, slotName: settings.slotName, publication: settings.publication)
                .disable(on: target)
            await target.close()
        }
        let lines = leftovers.describe(settings)
        guard !lines.isEmpty else { return }
        events.warning(
            events.currentPhase,
            "left in place so that nothing is lost: " + lines.joined(separator: "; ")
                + "; to remove all of it (the password comes from the environment or a passfile): \(Cleanup.command(for: config))",
            ["left_in_place": .list(lines), "cleanup_command": .string(Cleanup.command(for: config))])
    }
}
