import Foundation

/// A phase of a migration, named as the operator sees it in logs and JSON.
public enum Stage: String, Sendable, Codable, CaseIterable {
    case validate = "Validate"
    case prepareSnapshot = "PrepareSnapshot"
    case dump = "Dump"
    case restore = "Restore"
    case analyze = "Analyze"
    case streamApply = "StreamApply"
    case lag = "Lag"
    case caughtUp = "CaughtUp"
    case fellBehind = "FellBehind"
    case cutover = "Cutover"
    case verify = "Verify"
    case cleanup = "Cleanup"
    case complete = "Complete"
}

/// One progress report: what stage, what happened, and structured detail.
public struct MigrationEvent: Sendable, Encodable {
    public enum Level: String, Sendable, Codable {
        case info, warning, error
    }

    /// What an event is, for a program to act on without reading its message or its detail's keys.
    public enum Kind: String, Sendable, Codable {
        /// A step began or ended, a decision, a warning: for people (the detail has the figures).
        case message
        /// The copy's overall progress (bytes, rate, ETA, the parts in flight), every two seconds.
        case copyProgress
        /// One table part being copied, with its bytes so far, beside each ``copyProgress``.
        case partProgress
        /// The target applies the source's changes from now on: a cutover may be requested.
        case streaming
        /// The cutover switched: the target holds every change and may take writes (with a freeze,
        /// the detail's `write_downtime_seconds` says how long writes were held).
        case targetReady
    }

    public var timestamp: Date
    public var level: Level
    public var stage: Stage
    public var kind: Kind
    public var message: String
    public var detail: [String: EventValue]

    public init(
        stage: Stage, level: Level = .info, kind: Kind = .message, message: String, detail: [String: EventValue] = [:],
        timestamp: Date = Date()
    ) {
        self.timestamp = timestamp
        self.level = level
        self.stage = stage
        self.kind = kind
        self.message = message
        self.detail = detail
    }
}

/// A detail value: JSON keeps numbers as numbers.
public enum EventValue: Sendable, Equatable, Encodable, CustomStringConvertible, ExpressibleByStringLiteral,
    ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral
{
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case list([String])

    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let value): try container.encode(value)
        case .int(let value): try container.encode(value)
        case .double(let value): try container.encode(value)
        case .bool(let value): try container.encode(value)
        case .list(let value): try container.encode(value)
        }
    }

    public var description: String {
        switch self {
        case .string(let value): value
        case .int(let value): String(value)
        case .double(let value): String(format: "%.3f", value)
        case .bool(let value): String(value)
        case .list(let value): value.joined(separator: ",")
        }
    }
}

/// Where events go. Called from the migration's tasks; must be cheap and thread-safe.
public typealias EventHandler = @Sendable (MigrationEvent) -> Void
