import Foundation
import Logging

/// Sends events to the caller's handler and mirrors them into the library's logger.
struct EventEmitter: Sendable {
    var handler: EventHandler
    var logger: Logger
    private let phase = PhaseTracker()
    private var tracksPhase = true
    /// What `status` answers, fed by every event and by readings that never become one.
    let status: LiveStatus

    init(handler: @escaping EventHandler, logger: Logger, status: LiveStatus = LiveStatus(mode: .offline)) {
        self.handler = handler
        self.logger = logger
        self.status = status
    }

    /// The same destination for work that runs beside the phases (online ANALYZE):
    /// its events do not move the current phase.
    var background: EventEmitter {
        var copy = self
        copy.tracksPhase = false
        return copy
    }

    /// The phase the run is in: the stage of the last phase event (heartbeat stages don't count).
    var currentPhase: Stage { phase.current }

    func emit(_ event: MigrationEvent) {
        let movesPhase = tracksPhase && ![.lag, .caughtUp, .fellBehind].contains(event.stage)
        if movesPhase { phase.current = event.stage }
        status.observe(event, movesPhase: movesPhase)
        var metadata: Logger.Metadata = ["stage": .string(event.stage.rawValue)]
        for (key, value) in event.detail { metadata[key] = .string(value.description) }
        logger.log(level: event.level == .info ? .debug : .notice, "\(event.message)", metadata: metadata)
        handler(event)
    }

    func info(_ stage: Stage, _ message: String, _ detail: [String: EventValue] = [:]) {
        emit(MigrationEvent(stage: stage, message: message, detail: detail))
    }

    func warning(_ stage: Stage, _ message: String, _ detail: [String: EventValue] = [:]) {
        emit(MigrationEvent(stage: stage, level: .warning, message: message, detail: detail))
    }
}

private final class PhaseTracker: @unchecked Sendable {
    private let lock = NSLock()
    private var stage = Stage.validate
    var current: Stage {
        get { lock.withLock { stage } }
        set { lock.withLock { stage = newValue } }
    }
}

extension EventEmitter {
    /// `error`, or ``MigrationCancelled`` naming the current phase when the task was cancelled.
    func cancellation(ifCancelled error: Error) -> Error {
        if error is CancellationError || Task.isCancelled { return MigrationCancelled(stage: currentPhase) }
        return error
    }
}
