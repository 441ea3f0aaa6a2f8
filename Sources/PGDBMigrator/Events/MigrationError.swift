/// Why a migration stopped, in the operator's words: what happened, and what to do.
///
/// Never contains a password: messages built from connection strings use
/// their redacted form, and server or child-process text is scrubbed.
public struct MigrationError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure it is, for a program to branch on (the `code` of the CLI's `--json`
    /// error object). Open: new codes may come, so a `switch` needs a default.
    public struct Code: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// An argument is out of range, malformed, or contradicts another; nothing was touched.
        public static let invalidArgument = Code(rawValue: "invalid_argument")
        /// A server could not be reached, or refused the login.
        public static let connection = Code(rawValue: "connection")
        /// Source and target are one database: refused before anything was written.
        public static let sameDatabase = Code(rawValue: "same_database")
        /// Another run holds the target database or the state directory.
        public static let busy = Code(rawValue: "busy")
        /// The recorded run state is in the way: an interrupted run without `--resume`, nothing
        /// to resume, or a resume with other settings.
        public static let runState = Code(rawValue: "run_state")
        /// An object this run would use or drop belongs to someone else (a slot, a publication,
        /// a subscription, a target database another migration filled).
        public static let notOurs = Code(rawValue: "not_ours")
        /// A pattern matches nothing, or the tables to migrate changed under the run.
        public static let tableSet = Code(rawValue: "table_set")
        /// A server, role or table cannot do what the run needs (found before anything is copied).
        public static let preflight = Code(rawValue: "preflight")
        /// A wait on another session (a lock, a slot's consumer, old transactions) passed `lockTimeout`.
        public static let lockTimeout = Code(rawValue: "lock_timeout")
        /// The replication slot was dropped or invalidated: the stream cannot go on.
        public static let slotLost = Code(rawValue: "slot_lost")
        /// `pg_dump`, `pg_restore`, a copy or an index build failed.
        public static let copyFailed = Code(rawValue: "copy_failed")
        /// The stream stopped, or the cutover could not prove that nothing was lost; nothing was dropped.
        public static let streamFailed = Code(rawValue: "stream_failed")
        /// Verify found differences between source and target.
        public static let verifyMismatch = Code(rawValue: "verify_mismatch")
        /// The cutover completed, but some sequences could not be set on the target.
        public static let sequenceSync = Code(rawValue: "sequence_sync")
        /// Stopped by the operator (a signal) or by cancelling the task: ``MigrationCancelled``.
        public static let cancelled = Code(rawValue: "cancelled")
        /// Anything else.
        public static let failed = Code(rawValue: "failed")

        /// The code of a failure not given one: what failed, by the phase it failed in.
        static func of(_ stage: Stage) -> Code {
            switch stage {
            case .validate: .preflight
            case .prepareSnapshot, .dump, .restore, .analyze: .copyFailed
            case .streamApply, .lag, .caughtUp, .fellBehind, .cutover: .streamFailed
            case .verify, .cleanup, .complete: .failed
            }
        }
    }

    public var stage: Stage
    public var code: Code
    /// What happened.
    public var message: String
    /// What the operator can do about it, when we know.
    public var fix: String?
    /// The error that caused this one (a server's `PostgresError`, say), for programs; its text,
    /// scrubbed, is in `message` already.
    public var underlying: (any Error & Sendable)?

    public init(_ stage: Stage, _ message: String, fix: String? = nil, code: Code? = nil, underlying: (any Error & Sendable)? = nil) {
        self.stage = stage
        self.code = code ?? .of(stage)
        self.message = message
        self.fix = fix
        self.underlying = underlying
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
