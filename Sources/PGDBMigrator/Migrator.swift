import Logging
import PostgresClient

/// Runs one migration: the phase machine behind the CLI.
///
/// ```swift
/// let migrator = Migrator(config: config) { event in print(event.stage, event.message) }
/// let outcome = try await migrator.run()
/// ```
///
/// Cancelling the task that awaits ``run()`` stops the migration: child
/// processes are terminated and temporary files removed, and `run()` throws
/// ``MigrationCancelled``.
public struct Migrator: Sendable {
    public let config: MigrationConfig
    /// Status, cutover and abort, from any thread or process (see ``MigrationControl``).
    public let control: MigrationControl
    /// Call `request()` on it to cut an online migration over (``MigrationControl/requestCutover()`` says
    /// whether it can).
    public var cutoverHandle: CutoverHandle { control.cutover }
    let events: EventEmitter

    public init(
        config: MigrationConfig, logger: Logger = Logger(label: "pg_dbmigrator", factory: { _ in SwiftLogNoOpLogHandler() }),
        onEvent: @escaping EventHandler = { _ in }
    ) {
        self.config = config.effective
        self.control = MigrationControl(mode: config.mode)
        self.events = EventEmitter(handler: onEvent, logger: logger, status: control.live)
    }

    /// Runs the migration. Before anything is touched, the arguments are checked,
    /// source and target are shown to be two databases, and the run takes its
    /// state directory and target database for itself (see `RunGuard`). An offline
    /// or online run then serves ``control`` on its control socket (and `listen`).
    public func run() async throws -> MigrationOutcome {
        let held: RunGuard.Held
        do {
            held = try await RunGuard(config: config, events: events).acquire()
        } catch {
            let error = events.cancellation(ifCancelled: error)
            control.finish(MigrationResult(error, abortedBy: control.abortCause))
            throw error
        }
        var server: ControlServer?
        do {
            if [.offline, .online].contains(config.mode) {
                server = try await ControlServer.start(control: control, config: config, events: events)
            }
            // In a task of its own, so an abort from the control (or the caller's cancellation) stops it.
            let work = Task { [self] in try await runMode() }
            control.onAbort { work.cancel() }
            let outcome = try await withTaskCancellationHandler {
                try await work.value
            } onCancel: {
                work.cancel()
            }
            control.finish(MigrationResult(outcome, mode: config.mode, status: control.status))
            await server?.stop()
            await held.release()
            return outcome
        } catch {
            let error = events.cancellation(ifCancelled: error)
            control.finish(MigrationResult(error, abortedBy: control.abortCause))
            await server?.stop()
            await held.release()
            throw error
        }
    }

    private func runMode() async throws -> MigrationOutcome {
        switch config.mode {
        case .offline:
            return try await OfflineMigration(config: config, events: events).run()
        case .online:
            return try await OnlineMigration(config: config, events: events, cutover: cutoverHandle).run()
        case .verify:
            return try await VerifyRun(config: config, events: events).run()
        case .cleanup:
            return try await Cleanup(config: config, events: events).run()
        }
    }
}

/// What a successful run reports.
public struct MigrationOutcome: Sendable {
    public var mode: MigrationConfig.Mode
    /// True when an online run ended by the operator's cutover request.
    public var cutoverTriggered: Bool
    /// Problems tolerated along the way (e.g. `pg_restore` errors under `--allow-restore-errors`).
    public var warnings: [String]
    public var duration: Duration
    /// Online: the source LSN every committed transaction was applied up to.
    public var barrierLSN: LSN?
    /// Online: sequences that could not be synced at cutover, with the reason.
    public var sequenceFailures: [String: String]
    /// What verify found, when it ran.
    public var verifyReport: VerifyReport?

    public init(
        mode: MigrationConfig.Mode, cutoverTriggered: Bool, warnings: [String], duration: Duration,
        barrierLSN: LSN? = nil, sequenceFailures: [String: String] = [:], verifyReport: VerifyReport? = nil
    ) {
        self.mode = mode
        self.cutoverTriggered = cutoverTriggered
        self.warnings = warnings
        self.duration = duration
        self.barrierLSN = barrierLSN
        self.sequenceFailures = sequenceFailures
        self.verifyReport = verifyReport
    }
}
