import Foundation

/// Operating a running migration from outside its task: status, cutover and abort.
///
/// The CLI's signals, the control socket (`pg_dbmigrator status | cutover | abort`) and `--listen`'s
/// HTTP endpoints all go through here, so each asks the same thing in the same way:
///
/// ```swift
/// let migrator = Migrator(config: config)
/// let run = Task { try await migrator.run() }
/// // … later, from anywhere:
/// switch migrator.control.requestCutover() {
/// case .accepted, .alreadyRequested: print(await migrator.control.result())
/// case .refused(let why): print("not now:", why)
/// case .ended(let result): print(result)
/// }
/// ```
public final class MigrationControl: Sendable {
    let live: LiveStatus
    let cutover = CutoverHandle()
    private let aborting = Mutex<(cause: AbortCause?, action: (@Sendable () -> Void)?)>((nil, nil))
    private let ending = Mutex<(result: MigrationResult?, waiters: [CheckedContinuation<MigrationResult, Never>])>((nil, []))

    /// What a cutover request got.
    public enum CutoverAnswer: Sendable, Equatable {
        /// This request started the cutover.
        case accepted
        /// A cutover had already been requested: this request joins it.
        case alreadyRequested
        /// Not possible now (the copy is still running, or this is not an online run): why.
        case refused(String)
        /// The run had already ended, so.
        case ended(MigrationResult)
    }

    /// Who stopped the run.
    public enum AbortCause: Sendable, Equatable {
        case signal(Int32)
        /// `pg_dbmigrator abort`, `POST /abort` or ``abort(_:)`` called by a program.
        case request

        /// The exit status the run ends with: 128 + the signal, 130 (as SIGINT) for a request.
        public var exitCode: Int32 {
            switch self {
            case .signal(let number): 128 + number
            case .request: 130
            }
        }

        public var description: String {
            switch self {
            case .signal(SIGTERM): "SIGTERM"
            case .signal(SIGINT): "SIGINT"
            case .signal(let number): "signal \(number)"
            case .request: "an abort request (pg_dbmigrator abort)"
            }
        }
    }

    init(mode: MigrationConfig.Mode) {
        live = LiveStatus(mode: mode)
    }

    /// The run as of now.
    public var status: MigrationStatus { live.snapshot }

    /// Asks an online run that is streaming to cut over (what the first Ctrl+C does). Before streaming it
    /// is refused, naming the phase: a request never aborts a copy. Any number of requests make one cutover.
    public func requestCutover() -> CutoverAnswer {
        let status = live.snapshot
        if let result = status.result { return .ended(result) }
        guard status.mode == MigrationConfig.Mode.online.rawValue else {
            return .refused("only an online migration cuts over; this run is \(status.mode)")
        }
        guard status.streaming else {
            return .refused("the run is in phase \(status.phase), not streaming yet; cutover is possible once the copy is done")
        }
        guard cutover.requestOnce() else { return .alreadyRequested }
        live.update { $0.cutover.state = "requested" }
        return .accepted
    }

    /// Stops the run (what a second Ctrl+C does): child processes end, and an online run leaves its
    /// replication objects in place for `--resume` or `--mode cleanup`.
    public func abort(_ cause: AbortCause = .request) {
        let action = aborting.withLock { state -> (@Sendable () -> Void)? in
            if state.cause == nil { state.cause = cause }
            return state.action
        }
        action?()
    }

    /// Who aborted the run, if anyone did.
    public var abortCause: AbortCause? { aborting.withLock { $0.cause } }

    /// Waits for the run to end, and says how it did.
    public func result() async -> MigrationResult {
        await withCheckedContinuation { continuation in
            let ended = ending.withLock { state -> MigrationResult? in
                if let result = state.result { return result }
                state.waiters.append(continuation)
                return nil
            }
            if let ended { continuation.resume(returning: ended) }
        }
    }

    /// What an abort does for this run; runs at once when an abort came first.
    func onAbort(_ action: @escaping @Sendable () -> Void) {
        let abortedAlready = aborting.withLock { state -> Bool in
            state.action = action
            return state.cause != nil
        }
        if abortedAlready { action() }
    }

    func finish(_ result: MigrationResult) {
        live.update {
            $0.result = result
            if $0.cutover.state == "requested" && result.exitCode != 0 { $0.cutover.state = "failed" }
        }
        let waiters = ending.withLock { state in
            state.result = result
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(returning: result) }
    }
}

extension MigrationResult {
    /// How `outcome` ends the run: exit 1 when verify found differences or a sequence could not be synced.
    init(_ outcome: MigrationOutcome, mode: MigrationConfig.Mode, status: MigrationStatus) {
        let mismatch = mode == .verify && outcome.verifyReport.map { !$0.matches } == true
        let unsynced = outcome.sequenceFailures.keys.sorted()
        let message: String
        if mismatch {
            message = "source and target differ (\(outcome.verifyReport?.problems.count ?? 0) difference(s))"
        } else if !unsynced.isEmpty {
            message = "cutover complete, but \(unsynced.count) sequence(s) could not be synced: " + unsynced.joined(separator: ", ")
        } else {
            message = outcome.cutoverTriggered ? "migration complete: cutover done" : "migration complete"
        }
        let failed = mismatch || !unsynced.isEmpty
        self.init(
            outcome: failed ? "failed" : "completed", exitCode: failed ? 1 : 0, message: message,
            code: mismatch
                ? MigrationError.Code.verifyMismatch.rawValue : unsynced.isEmpty ? nil : MigrationError.Code.sequenceSync.rawValue,
            barrierLSN: outcome.barrierLSN?.description, writeDowntimeSeconds: status.cutover.writeDowntimeSeconds)
    }

    /// How `error` ends the run.
    init(_ error: Error, abortedBy cause: MigrationControl.AbortCause?) {
        switch error {
        case let cancelled as MigrationCancelled:
            let cause = cause ?? .signal(SIGINT)
            self.init(
                outcome: "aborted", exitCode: cause.exitCode,
                message: "aborted by \(cause.description) during \(cancelled.stage.rawValue)", code: MigrationError.Code.cancelled.rawValue)
        case let failure as MigrationError:
            self.init(outcome: "failed", exitCode: 1, message: failure.message, code: failure.code.rawValue)
        default:
            self.init(outcome: "failed", exitCode: 1, message: String(describing: error), code: MigrationError.Code.failed.rawValue)
        }
    }
}
