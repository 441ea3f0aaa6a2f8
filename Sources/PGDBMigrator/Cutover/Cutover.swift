import PostgresClient

/// The cutover: freeze (optional) → barrier → wait until applied → sequences
/// → drop what we created. Every transaction the source committed before the
/// request is on the target when this returns.
struct Cutover {
    var config: MigrationConfig
    var events: EventEmitter
    /// Borrowed step by step, never kept: a server may restart while the cutover waits.
    var sessions: ControlSessions
    var leftovers: Leftovers
    /// What the migration carries: what must have been published, verified and sequence-synced.
    var tables: TableSet
    /// Stops relay apply, if it runs, before the teardown drops its slot (a subscription the teardown drops).
    var stopRelay: @Sendable () async -> Void
    var settings: OnlineSettings { config.online }

    struct Result {
        var barrier: LSN
        var sequences: SequenceSync.Result
        /// With a freeze: when writes to the source stopped.
        var frozenSince: ContinuousClock.Instant?
        /// With a freeze and verify: the target as of the barrier, before anything else wrote to it, for
        /// the verify after the switch (the caller releases it).
        var targetSnapshot: ExportedSnapshot?
        /// Where the time went, step by step.
        var steps: StepTimes
    }

    func run() async throws -> Result {
        var steps = StepTimes()
        var frozenSince: ContinuousClock.Instant?
        if settings.freezeSourceAtCutover {
            frozenSince = .now
            // Not repeatable as a whole (it records what it did as it goes): one attempt, on the sessions of now.
            let source = await sessions.current.source
            let sourceEndpoint = config.sourceEndpoint
            let freeze = SourceFreeze(database: sourceEndpoint.databaseName, runID: leftovers.runID)
            let lockWait = LockWait(server: sourceEndpoint, events: events, stage: .cutover, timeout: config.lockTimeout)
            let (ended, left, alreadyReadOnly) = try await freeze.freeze(on: source, tables: tables.tables, lockWait: lockWait) {
                try leftovers.setDurably(\.frozenDatabase, freeze.database)
            }
            events.info(
                .cutover,
                "source database \(SQL.identifier(freeze.database)) is now frozen: read-only for new sessions, and a trigger on "
                    + "each of the \(tables.tables.count) migrated table(s) rejects writes whatever a session sets"
                    + (alreadyReadOnly ? " (it already was by its own settings, which this run will leave as they are)" : "")
                    + "; ended \(ended) session(s)",
                ["sessions_ended": .int(ended)])
            if !left.isEmpty {
                events.warning(
                    .cutover,
                    "\(left.count) session(s) on the source could not be ended (the source role may not signal them); "
                        + "the triggers reject their writes to the migrated tables",
                    ["sessions": .list(left)])
            }
            steps.lap("freeze")
        }

        // Everything committed so far has its commit record before this point.
        let barrierText = try await sessions.retrying { source, _ in try await source.scalar("SELECT pg_current_wal_insert_lsn()::text") }
        guard let barrier = barrierText.flatMap(LSN.init) else {
            throw MigrationError(.cutover, "cannot read the barrier LSN on the source")
        }
        events.info(.cutover, "waiting for the target to apply up to barrier \(barrier)", ["barrier_lsn": .string(barrier.description)])
        // A target session holding a lock the apply worker needs would hold the cutover up: say whose.
        try await LockWait(server: config.targetEndpoint, events: events, stage: .cutover, timeout: config.lockTimeout)
            .watching("applying up to the barrier", blockers: settings.applyingSessions) {
                try await waitForApply(past: barrier)
            }
        steps.lap("apply_wait")
        if settings.freezeSourceAtCutover {
            let (source, target) = await sessions.current
            try await NonReplicatedData(tables: tables.unloggedTables, events: events)
                .copy(source: source, target: target)
            steps.lap("unlogged_and_large_objects")
        }

        // What was copied is what was published: a table taken out of the publication (or a filter or action
        // added to it) since Validate lost changes, and that is an error, never a Complete.
        let publication = Publication(name: settings.publication)
        let coverage = try await sessions.retrying { [tables] source, _ in try await publication.coverageProblems(of: tables, on: source) }
        guard coverage.isEmpty else {
            throw MigrationError(
                .cutover,
                "the publication \(SQL.identifier(settings.publication)) no longer carries every change of the migrated tables, "
                    + "so the target may miss some: " + coverage.joined(separator: "; ") + "; nothing was dropped",
                fix: "the subscription and slot are kept (disabled): compare the tables named, or start over with "
                    + "\(Cleanup.command(for: config)) and \(Setting.dropTargetFirst)")
        }

        // Both sides are quiet now (the source is frozen, the target has applied everything): the target's
        // state is kept in a snapshot and proved equal to the source after the switch, so that writes are
        // held for the switch only, however large the database.
        steps.lap("publication_check")
        var snapshot: ExportedSnapshot?
        if settings.freezeSourceAtCutover && config.verify.mode != .off {
            snapshot = try await ExportedSnapshot.export(from: config.targetEndpoint, stage: .cutover)
            steps.lap("target_snapshot")
        }
        do {
            let (barrier, sequences) = try await finish(at: barrier, steps: &steps)
            return Result(barrier: barrier, sequences: sequences, frozenSince: frozenSince, targetSnapshot: snapshot, steps: steps)
        } catch {
            await snapshot?.release()
            throw error
        }
    }

    /// Sequences, then the teardown.
    private func finish(at barrier: LSN, steps: inout StepTimes) async throws -> (LSN, SequenceSync.Result) {
        var sequences = SequenceSync.Result(synced: 0, failures: [:])
        if settings.syncSequences {
            let sync = SequenceSync(sequences: tables.sequences)
            sequences = try await sessions.retrying { source, target in try await sync.run(source: source, target: target) }
            for (name, reason) in sequences.failures.sorted(by: { $0.key < $1.key }) {
                events.emit(
                    MigrationEvent(
                        stage: .cutover, level: .error, message: "could not sync sequence \(name): \(reason)",
                        detail: ["sequence": .string(name)]))
            }
            events.info(.cutover, "synced \(sequences.synced) sequence(s)", ["sequences": .int(sequences.synced)])
            steps.lap("sequences")
        }

        // From here a killed run has nothing left to apply: --resume only finishes the teardown.
        leftovers.set(\.cutoverBarrier, barrier.description)
        await stopRelay()
        // Each of its steps looks before it drops, and records as it goes: safe to run again.
        let teardown = ReplicationTeardown(config: config, events: events, leftovers: leftovers)
        try await sessions.retrying { source, target in try await teardown.run(source: source, target: target) }
        steps.lap("teardown")
        return (barrier, sequences)
    }

    /// Polls until the slot's confirmed position (what the target applied and flushed) reaches the barrier:
    /// every 20 ms at most, since with a freeze writes are held for as long as this takes.
    private func waitForApply(past barrier: LSN) async throws {
        let monitor = settings.lagMonitor
        let deadline = ContinuousClock.now + settings.cutoverTimeout
        var lastReport = ContinuousClock.now
        while true {
            let reading = try await sessions.retrying { try await monitor.read(source: $0, target: $1) }
            if reading.appliedLSN >= barrier {
                events.info(.cutover, "target applied past the barrier", reading.detail)
                return
            }
            if ContinuousClock.now - lastReport >= .seconds(2) {
                lastReport = ContinuousClock.now
                var detail = reading.detail
                detail["barrier_lsn"] = .string(barrier.description)
                events.info(.cutover, "\(barrier.bytes(since: reading.appliedLSN)) bytes left to apply before the barrier", detail)
            }
            if ContinuousClock.now > deadline {
                throw MigrationError(
                    .cutover,
                    "the target did not apply up to the barrier \(barrier) within \(settings.cutoverTimeout) (applied: \(reading.appliedLSN)"
                        + (reading.workerRunning ? ")" : ", apply worker not running)"),
                    fix:
                        "nothing was dropped; check the target's server log for apply errors, then run again with a longer \(Setting.cutoverTimeout)"
                )
            }
            try await Task.sleep(for: min(settings.fastPollInterval, .milliseconds(20)))
        }
    }
}

/// The last step of a cutover: the subscription, the slot and an auto-created
/// publication dropped (or kept, as told), each recorded as it goes.
struct ReplicationTeardown {
    var config: MigrationConfig
    var events: EventEmitter
    var leftovers: Leftovers
    var settings: OnlineSettings { config.online }

    func run(source: Connection, target: Connection) async throws {
        let runID = leftovers.runID
        let subscription = Subscription(
            name: settings.subscriptionName, slotName: settings.slotName, publication: settings.publication, runID: runID)
        let created = leftovers.snapshot
        if !created.subscriptionCreated {
            // A resumed teardown that had already dropped it.
        } else if let owner = try await subscription.owner(on: target), owner != .thisRun {
            leaveAlone("subscription", settings.subscriptionName, "target", owner, \.subscriptionCreated)
        } else if settings.keepSubscription {
            if settings.keepSlot {
                try await subscription.disable(on: target)
            } else {
                try await subscription.detachSlot(on: target)
            }
            events.info(.cutover, "kept subscription \(SQL.identifier(settings.subscriptionName)) on the target, disabled")
        } else {
            try await subscription.drop(on: target)
            leftovers.set(\.subscriptionCreated, false)
            events.info(.cutover, "dropped subscription \(SQL.identifier(settings.subscriptionName)) on the target")
        }

        if !created.slotCreated {
            // Already dropped by the interrupted teardown this one resumes.
        } else if settings.keepSlot {
            events.info(.cutover, "kept replication slot \(SQL.identifier(settings.slotName)) on the source (it retains WAL until dropped)")
        } else {
            try await ReplicationSlot.drop(named: settings.slotName, on: source, timeout: config.lockTimeout, events: events)
            leftovers.set(\.slotCreated, false)
            events.info(.cutover, "dropped replication slot \(SQL.identifier(settings.slotName)) on the source")
        }

        if let origin = leftovers.snapshot.relayOrigin {
            try await RelayApplier.dropOrigin(origin, on: target, timeout: config.lockTimeout, stage: .cutover, events: events)
            leftovers.set(\.relayOrigin, nil)
            events.info(.cutover, "dropped replication origin \(SQL.identifier(origin)) on the target (relay apply's position)")
        }

        if leftovers.snapshot.publicationCreated {
            let publication = Publication(name: settings.publication, runID: runID)
            if let owner = try await publication.owner(on: source), owner != .thisRun {
                leaveAlone("publication", settings.publication, "source", owner, \.publicationCreated)
            } else {
                try await publication.drop(on: source)
                leftovers.set(\.publicationCreated, false)
                events.info(.cutover, "dropped publication \(SQL.identifier(settings.publication)) on the source")
            }
        }
    }

    /// The run recorded creating an object of this name, but the one there now
    /// is not marked as this run's (replaced since, by hand or by another run):
    /// it is not ours to drop, and no longer ours to track.
    private func leaveAlone(
        _ kind: String, _ name: String, _ server: String, _ owner: OwnershipMark.Owner,
        _ field: WritableKeyPath<RunState.OnlineState, Bool> & Sendable
    ) {
        leftovers.set(field, false)
        events.warning(
            .cutover, "left the \(kind) \(SQL.identifier(name)) on the \(server) in place: \(owner.reason)",
            [kind: .string(name)])
    }
}

/// Where a cutover's time went, step by step: the ready event lists it, so an operator sees what the
/// write downtime was spent on.
struct StepTimes {
    private(set) var steps: [(name: String, duration: Duration)] = []
    private var last = ContinuousClock.now

    /// Ends the step `name` now.
    mutating func lap(_ name: String) {
        let now = ContinuousClock.now
        steps.append((name, now - last))
        last = now
    }

    var described: [String] { steps.map { "\($0.name)=" + String(format: "%.3f", $0.duration.seconds) } }
}
