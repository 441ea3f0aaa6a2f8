import PostgresClient

/// What a run does with what an interrupted run of the same command recorded.
///
/// Decided once, at the start, from the recorded state alone, and handed to
/// every phase that acts on it; the configuration is never changed to steer
/// them. `--resume` (``MigrationConfig/resume``) is only what the operator
/// asked for.
enum ResumePlan: Equatable, Sendable {
    /// Nothing to continue: a new run.
    case fresh
    /// Offline: nothing of the copy reached the target; it starts again (reusing a finished dump).
    case startCopyAgain
    /// Offline: the interrupted run died making the schema: what it made is redone from scratch.
    case redoTarget
    /// Offline: the schema is in place; the copy goes on (committed parts and sections skipped).
    case continueCopy
    /// Online: it died during the copy, and its exported snapshot died with it. Its slot and
    /// subscription go, and the copy starts again from a new slot; the target database is made
    /// again when the interrupted run had begun to fill it.
    case restartOnlineCopy(recreateTarget: Bool)
    /// Online: it was streaming; re-attach to its slot and subscription.
    case reattach
    /// Online: the cutover had applied everything up to this barrier and synced sequences; only the teardown is left.
    case finishTeardown(barrier: LSN)

    static func decide(resume: Bool, mode: MigrationConfig.Mode, recorded: RunState) -> ResumePlan {
        guard resume else { return .fresh }
        if mode == .online {
            if let barrier = recorded.online.cutoverBarrier.flatMap(LSN.init) { return .finishTeardown(barrier: barrier) }
            if recorded.online.subscriptionCreated || recorded.online.relayOrigin != nil { return .reattach }
            return .restartOnlineCopy(recreateTarget: recorded.copy.targetTouched)
        }
        if recorded.copy.targetPrepared { return .continueCopy }
        if recorded.copy.targetTouched { return .redoTarget }
        return .startCopyAgain
    }

    /// Whether this run drops and re-creates the target database (as `--drop-target-first` would).
    var recreatesTarget: Bool {
        switch self {
        case .redoTarget: true
        case .restartOnlineCopy(let recreate): recreate
        default: false
        }
    }

    /// Whether the copy goes on from the interrupted run's recorded plan and progress.
    var continuesCopy: Bool { self == .continueCopy }

    /// Whether the target already holds the interrupted run's schema, which this run goes on from.
    var targetHoldsRecordedCopy: Bool { self == .continueCopy || self == .reattach }

    /// Whether a finished dump the interrupted run left is restored instead of dumping again.
    /// Online never: the stream must start exactly where the dump did.
    var reusesFinishedDump: Bool { self == .continueCopy || self == .startCopyAgain }

    /// Whether a `--dump-path` holding only what the interrupted run wrote may be emptied for reuse.
    var reclaimsDumpDirectory: Bool { self != .fresh }
}
