import Foundation
import PostgresClient

/// `--mode cleanup`: removes what an interrupted run left — the subscription
/// on the target, the slot (and the WAL it holds) and the publication on the
/// source, a source database it froze — and its recorded progress, saying so
/// for each. `--dry-run` only lists.
///
/// Only what the recorded run created is dropped or undone: a publication or
/// subscription must carry that run's mark, a slot must be recorded in its
/// state, a freeze must be recorded as its own. Anything else of the same name
/// is listed with what it is, and left alone; `--drop-foreign-slot NAME` drops
/// a slot the run did not create (one kept by `--keep-slot`, say), but never
/// one a consumer is attached to.
struct Cleanup {
    var config: MigrationConfig
    var events: EventEmitter
    var settings: OnlineSettings { config.online }

    func run() async throws -> MigrationOutcome {
        let started = ContinuousClock.now
        let recorded = try RunStateStore.recorded(for: config)
        var found = try await removeLeftovers(of: recorded, dryRun: settings.dryRun)

        // The recorded progress of the run: with its objects gone, there is nothing left to resume.
        let state = RunStateStore.statePath(for: config)
        if FileManager.default.fileExists(atPath: state) {
            if !settings.dryRun { RunStateStore.discard(for: config) }
            found.append("\(settings.dryRun ? "would remove" : "removed") the recorded progress of the interrupted run (\(state))")
        }

        for line in found { events.info(.cleanup, line) }
        events.info(
            .complete, found.isEmpty ? "nothing to clean up" : "cleanup \(settings.dryRun ? "dry run " : "")complete",
            ["objects": .list(found)])
        return MigrationOutcome(mode: .cleanup, cutoverTriggered: false, warnings: [], duration: ContinuousClock.now - started)
    }

    /// Drops (or, with `dryRun`, lists) what the run `recorded` created, and lists
    /// what it leaves alone. Shared by `--mode cleanup` and `--force-clean`.
    func removeLeftovers(of recorded: RunState?, dryRun: Bool) async throws -> [String] {
        if let recorded, recorded.setting(.mode) == MigrationConfig.Mode.online.rawValue {
            let given = RunState.settings(
                of: {
                    var online = config; online.mode = .online; return online
                }())
            let differing = [Setting.slotName, .publication, .subscriptionName].filter { recorded.setting($0) != given[$0.rawValue] }
            guard differing.isEmpty else {
                throw MigrationError(
                    .cleanup,
                    "the run recorded in \(RunStateStore.statePath(for: config)) used other names ("
                        + differing.map { "\($0) \(recorded.setting($0) ?? "")" }.joined(separator: ", ")
                        + "); nothing was changed",
                    fix: "clean up with that run's names: \(Cleanup.command(recordedIn: recorded, config: config))", code: .runState)
            }
        }
        var found: [String] = []
        let verb = dryRun ? "would drop" : "dropped"
        let runID = recorded?.runID

        switch try await Subscription.remove(for: config, runID: runID, dryRun: dryRun) {
        case .thisRun:
            found.append("\(verb) subscription \(SQL.identifier(settings.subscriptionName)) on the target")
        case let owner?:
            let subscription = Subscription(name: settings.subscriptionName, slotName: settings.slotName, publication: settings.publication)
            kept("subscription \(SQL.identifier(settings.subscriptionName)) on the target", owner.reason, removal: subscription.removalSQL)
        case nil:
            break
        }

        // Relay apply's position, only when the recorded run made it (an origin carries no mark).
        if let origin = recorded?.online.relayOrigin {
            // Origins belong to the server, not a database: any database will do when the target's is gone.
            let target: Connection
            do {
                target = try await config.targetEndpoint.connect(label: "cleanup", stage: .cleanup)
            } catch {
                target = try await config.targetEndpoint.connect(
                    label: "cleanup", database: TargetDatabase.maintenanceDatabase(for: config.targetEndpoint.databaseName), stage: .cleanup
                )
            }
            let exists =
                try await target.scalar("SELECT count(*) > 0 FROM pg_replication_origin WHERE \(RelayApplier.ownOrigins)", [origin]) == "t"
            if exists && !dryRun {
                try await RelayApplier.dropOrigin(origin, on: target, timeout: config.lockTimeout, stage: .cleanup, events: events)
            }
            await target.close()
            if exists { found.append("\(verb) replication origin \(SQL.identifier(origin)) on the target (relay apply's position)") }
        }

        let source = try await config.sourceEndpoint.connect()
        if let recordedSource = recorded?.online.sourceIdentity, try await SourceIdentity.read(on: source) != recordedSource {
            await source.close()
            throw MigrationError(
                .cleanup,
                "the run recorded in \(RunStateStore.statePath(for: config)) migrated from another source database than \(Setting.source) "
                    + "\(config.source.redacted): objects of its names here are not its own; nothing was changed",
                fix: "clean up with that run's source: \(Cleanup.command(recordedIn: recorded!, config: config))", code: .runState)
        }
        let ours = recorded?.ownsSlot(named: settings.slotName) ?? false
        if let line = try await removeSlot(named: settings.slotName, ours: ours, on: source, dryRun: dryRun) { found.append(line) }
        if let foreign = settings.dropForeignSlot, foreign != settings.slotName,
            let line = try await removeSlot(named: foreign, ours: false, on: source, dryRun: dryRun)
        {
            found.append(line)
        }

        let publication = Publication(name: settings.publication, runID: runID)
        switch try await publication.owner(on: source) {
        case .thisRun:
            if !dryRun { try await publication.drop(on: source) }
            found.append("\(verb) publication \(SQL.identifier(settings.publication)) on the source")
        case let owner?:
            kept(
                "publication \(SQL.identifier(settings.publication)) on the source", owner.reason,
                removal: "DROP PUBLICATION \(SQL.identifier(settings.publication))")
        case nil:
            break
        }

        // Only a freeze the recorded run made is undone: a read-only setting someone else made stays.
        let sourceDatabase = config.sourceEndpoint.databaseName
        if let recorded {
            let freeze = SourceFreeze(database: sourceDatabase, runID: recorded.runID)
            let settingInPlace = try await freeze.isInPlace(on: source)
            let resetSetting = recorded.online.frozenDatabase == sourceDatabase && settingInPlace
            let ownTriggers = try await freeze.hasOwnTriggers(on: source)
            if resetSetting || ownTriggers {
                if !dryRun { try await freeze.unfreeze(on: source, resetSetting: resetSetting) }
                found.append("\(dryRun ? "would make" : "made") the source database \(SQL.identifier(sourceDatabase)) writable again")
            }
        }
        await source.close()
        return found
    }

    /// Drops the slot `name` if it is ours, or named by `--drop-foreign-slot` and
    /// not in use; otherwise says what it is and leaves it. Returns the line for what was done.
    private func removeSlot(named name: String, ours: Bool, on source: Connection, dryRun: Bool) async throws -> String? {
        guard let slot = try await ReplicationSlot.describe(named: name, on: source) else {
            if settings.dropForeignSlot == name { events.info(.cleanup, "no replication slot \(SQL.identifier(name)) on the source") }
            return nil
        }
        events.info(
            .cleanup, "replication slot \(SQL.identifier(name)): \(slot.summary)",
            ["slot": .string(name), "retained_wal_bytes": .int(slot.retainedBytes)])
        let foreignButNamed = settings.dropForeignSlot == name
        guard ours || foreignButNamed else {
            kept(
                "replication slot \(SQL.identifier(name)) on the source (\(slot.summary))",
                "the recorded run did not create it",
                removal: slot.activePID == nil ? "pass \(Setting.dropForeignSlot) \(name) if you are sure no one needs it" : nil)
            return nil
        }
        if foreignButNamed && !ours, let pid = slot.activePID {
            kept(
                "replication slot \(SQL.identifier(name)) on the source (\(slot.summary))",
                "a consumer is attached to it (walsender pid \(pid)); a slot in use is never dropped", removal: nil)
            return nil
        }
        // Ours: wait for our own subscription's walsender to let go. Anyone else's: one attempt, and a
        // consumer that attached meanwhile makes the server refuse it.
        if !dryRun { try await ReplicationSlot.drop(named: name, on: source, timeout: ours ? config.lockTimeout : .zero, events: events) }
        return "\(dryRun ? "would drop" : "dropped") replication slot \(SQL.identifier(name)) on the source "
            + "(holding \(slot.retainedWAL) of WAL, status \(slot.walStatus))"
    }

    private func kept(_ what: String, _ reason: String, removal: String?) {
        events.warning(
            .cleanup, "kept \(what): \(reason)" + (removal.map { "; to remove it: \($0)" } ?? ""),
            ["kept": .string(what)])
    }

    /// The settings of the cleanup run that removes what a run of `config` left, in the words of
    /// ``MigrationConfig/Setting`` (a front end renders them: the CLI as its command line).
    static func command(for config: MigrationConfig) -> String {
        let settings = config.online
        return "\(Setting.mode) cleanup \(Setting.source) \(shellQuote(config.source.redacted)) "
            + "\(Setting.target) \(shellQuote(config.target.redacted)) \(Setting.slotName) \(shellQuote(settings.slotName)) "
            + "\(Setting.publication) \(shellQuote(settings.publication)) \(Setting.subscriptionName) \(shellQuote(settings.subscriptionName))"
            + (config.stateDirectory.map { " \(Setting.stateDirectory) \(shellQuote($0))" } ?? "")
    }

    /// The cleanup command for the run recorded in `state`, with the servers and names that run used.
    static func command(recordedIn state: RunState, config: MigrationConfig) -> String {
        var recorded = config
        if let source = state.setting(.source).flatMap({ try? ConnectionString($0) }) { recorded.source = source }
        if let target = state.setting(.target).flatMap({ try? ConnectionString($0) }) { recorded.target = target }
        recorded.online.slotName = state.setting(.slotName) ?? config.online.slotName
        recorded.online.publication = state.setting(.publication) ?? config.online.publication
        recorded.online.subscriptionName = state.setting(.subscriptionName) ?? config.online.subscriptionName
        return command(for: recorded)
    }

    private static func shellQuote(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
