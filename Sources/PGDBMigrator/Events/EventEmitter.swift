import Logging

/// Sends events to the caller's handler and mirrors them into the library's logger.
struct EventEmitter: Sendable {
    var handler: EventHandler
    var logger: Logger

    func emit(_ event: MigrationEvent) {
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
