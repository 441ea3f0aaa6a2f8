/// Why a migration stopped, in the operator's words: what happened, and what to do.
///
/// Never contains a password: messages built from connection strings use
/// their redacted form, and server or child-process text is scrubbed.
public struct MigrationError: Error, Sendable, CustomStringConvertible {
    public var stage: Stage
    /// What happened.
    public var message: String
    /// What the operator can do about it, when we know.
    public var fix: String?

    public init(_ stage: Stage, _ message: String, fix: String? = nil) {
        self.stage = stage
        self.message = message
        self.fix = fix
    }

    public var description: String {
        guard let fix else { return message }
        return "\(message) — \(fix)"
    }
}

/// The run was cancelled (Ctrl+C or SIGTERM before completion, or task cancellation).
public struct MigrationCancelled: Error, Sendable, CustomStringConvertible {
    public var stage: Stage
    public var description: String { "migration cancelled during \(stage.rawValue)" }
}
