import Foundation

/// What a running migration reports about itself: the answer to `pg_dbmigrator status`, `GET /status`
/// and `GET /metrics`. Encoded with snake_case keys.
public struct MigrationStatus: Codable, Sendable, Equatable {
    public var mode: String
    /// The stage of the last phase event (`Restore`, `StreamApply`, `Cutover`, …).
    public var phase: String
    /// Online: the target streams changes, and a cutover may be requested.
    public var streaming = false
    public var secondsRunning: Double = 0
    public var lag: Lag?
    /// Recent lag readings, oldest first, at most one per second over the last ten minutes.
    public var lagHistory: [LagPoint] = []
    public var copy: CopyProgress?
    /// WAL the replication slot holds on the source.
    public var retainedWALBytes: Int?
    /// The last warnings, oldest first.
    public var warnings: [String] = []
    /// Whether a cutover could start now; when not, why.
    public var ready = false
    public var notReadyReasons: [String] = []
    /// How long writes would be held by a cutover started now (see ``DowntimeEstimate``).
    public var writeDowntimeEstimateSeconds: Double?
    public var cutover = CutoverState()
    /// Set once the run has ended.
    public var result: MigrationResult?

    // Spelled as the snake_case key strategies read them back ("retained_wal_bytes" → "retainedWalBytes").
    private enum CodingKeys: String, CodingKey {
        case mode, phase, streaming, secondsRunning, lag, lagHistory, copy, warnings, ready, notReadyReasons
        case writeDowntimeEstimateSeconds, cutover, result
        case retainedWALBytes = "retainedWalBytes"
    }

    public struct Lag: Codable, Sendable, Equatable {
        public var bytes: Int
        public var seconds: Double?
        public var applyRateBytesPerSecond: Double?
        public var catchUpEstimateSeconds: Double?
        public var caughtUp: Bool
    }

    public struct LagPoint: Codable, Sendable, Equatable {
        /// Seconds since the run started.
        public var at: Double
        public var bytes: Int
        public var seconds: Double?
    }

    public struct CopyProgress: Codable, Sendable, Equatable {
        public var bytes: Int
        public var totalBytes: Int
        public var tablesDone: Int
        public var tables: Int
        public var etaSeconds: Double?
    }

    public struct CutoverState: Codable, Sendable, Equatable {
        /// `not_requested`, `requested`, `done` or `failed`.
        public var state = "not_requested"
        public var barrierLSN: String?
        public var writeDowntimeSeconds: Double?

        private enum CodingKeys: String, CodingKey {
            case state, writeDowntimeSeconds
            case barrierLSN = "barrierLsn"
        }
    }

    public init(mode: String, phase: String) {
        self.mode = mode
        self.phase = phase
    }

    public static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }()

    public static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }()
}

/// How a run ended, as `pg_dbmigrator cutover` and `abort` report it: the same exit status the
/// migration's own process exits with (0 success; 1 failed; 128 + signal, or 130, when aborted).
public struct MigrationResult: Codable, Sendable, Equatable {
    /// `completed`, `failed` or `aborted`.
    public var outcome: String
    public var exitCode: Int32
    public var message: String
    public var code: String?
    public var barrierLSN: String?
    public var writeDowntimeSeconds: Double?

    private enum CodingKeys: String, CodingKey {
        case outcome, exitCode, message, code, writeDowntimeSeconds
        case barrierLSN = "barrierLsn"
    }

    public init(
        outcome: String, exitCode: Int32, message: String, code: String? = nil, barrierLSN: String? = nil,
        writeDowntimeSeconds: Double? = nil
    ) {
        self.outcome = outcome
        self.exitCode = exitCode
        self.message = message
        self.code = code
        self.barrierLSN = barrierLSN
        self.writeDowntimeSeconds = writeDowntimeSeconds
    }
}

/// The status as the run goes: fed by every event (phase, warnings, copy progress, the target ready)
/// and by the heartbeat and slot guard directly (their fast readings never become events).
final class LiveStatus: Sendable {
    private let state: Mutex<MigrationStatus>
    private let started = ContinuousClock.now
    private let lastPoint = Mutex<ContinuousClock.Instant?>(nil)

    init(mode: MigrationConfig.Mode) {
        state = Mutex(MigrationStatus(mode: mode.rawValue, phase: Stage.validate.rawValue))
    }

    var snapshot: MigrationStatus {
        state.withLock { status in
            var answer = status
            answer.secondsRunning = (ContinuousClock.now - started).seconds
            if let result = status.result {
                answer.notReadyReasons = ["the run has ended (\(result.outcome))"]
            } else if status.cutover.state != "not_requested" {
                answer.notReadyReasons = ["a cutover is under way"]
            } else if status.mode != MigrationConfig.Mode.online.rawValue {
                answer.notReadyReasons = ["only an online migration cuts over; this run is \(status.mode)"]
            } else if !status.streaming {
                answer.notReadyReasons = ["not streaming yet: the run is in phase \(status.phase)"]
            }
            answer.ready = answer.notReadyReasons.isEmpty
            return answer
        }
    }

    func update(_ body: (inout MigrationStatus) -> Void) { state.withLock(body) }

    func observe(_ event: MigrationEvent, movesPhase: Bool) {
        state.withLock { status in
            if movesPhase { status.phase = event.stage.rawValue }
            if event.level != .info {
                status.warnings.append(event.message)
                if status.warnings.count > 20 { status.warnings.removeFirst(status.warnings.count - 20) }
            }
            switch event.kind {
            case .copyProgress:
                status.copy = Self.copy(event.detail)
            case .streaming:
                status.streaming = true
            case .targetReady:
                status.cutover.state = "done"
                if case .string(let barrier) = event.detail["barrier_lsn"] { status.cutover.barrierLSN = barrier }
                if case .double(let held) = event.detail["write_downtime_seconds"] { status.cutover.writeDowntimeSeconds = held }
            case .message, .partProgress:
                break
            }
        }
    }

    /// The copy's progress, from the detail of its progress line.
    func observeCopy(_ detail: [String: EventValue]) {
        state.withLock { $0.copy = Self.copy(detail) }
    }

    private static func copy(_ detail: [String: EventValue]) -> MigrationStatus.CopyProgress {
        let number = { (key: String) -> Int in if case .int(let value) = detail[key] { value } else { 0 } }
        var eta: Double?
        if case .double(let value) = detail["eta_seconds"] { eta = value }
        return MigrationStatus.CopyProgress(
            bytes: number("bytes"), totalBytes: number("total_bytes"), tablesDone: number("tables_done"), tables: number("tables"),
            etaSeconds: eta)
    }

    /// A lag reading of the heartbeat, kept in the history at most once a second.
    func observe(lag: MigrationStatus.Lag, notReady reasons: [String], downtimeEstimate: Double?) {
        let now = ContinuousClock.now
        let addPoint = lastPoint.withLock { last in
            guard last.map({ now - $0 >= .seconds(1) }) ?? true else { return false }
            last = now
            return true
        }
        state.withLock { status in
            status.lag = lag
            status.notReadyReasons = reasons
            status.writeDowntimeEstimateSeconds = downtimeEstimate
            guard addPoint else { return }
            status.lagHistory.append(.init(at: (now - started).seconds, bytes: lag.bytes, seconds: lag.seconds))
            if status.lagHistory.count > 600 { status.lagHistory.removeFirst(status.lagHistory.count - 600) }
        }
    }
}
