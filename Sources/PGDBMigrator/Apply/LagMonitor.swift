import Foundation
import PostgresClient

/// One reading of how far the target is behind the source, each LSN read where it really is.
struct LagReading: Sendable {
    /// `pg_current_wal_lsn()` on the source.
    var sourceLSN: LSN
    /// `pg_stat_subscription.received_lsn` on the target: what the apply worker has received.
    var receivedLSN: LSN?
    /// `confirmed_flush_lsn` of the slot on the source: what the target has applied and flushed.
    var appliedLSN: LSN
    /// Whether the target's apply worker is running.
    var workerRunning: Bool
    /// `pg_stat_subscription_stats.apply_error_count` (PostgreSQL 15+), else nil.
    var applyErrors: Int?
    /// How far behind the target is in time: the `replay_lag` the source's walsender for the subscription
    /// measures; 0 when nothing is left to apply; nil when unknown (the walsender is not connected, or has
    /// not measured yet).
    var lagSeconds: Double?

    var lagBytes: UInt64 { sourceLSN.bytes(since: appliedLSN) }

    var detail: [String: EventValue] {
        var detail: [String: EventValue] = [
            "lag_bytes": .int(Int(lagBytes)), "source_lsn": .string(sourceLSN.description),
            "received_lsn": .string(receivedLSN?.description ?? "none"), "applied_lsn": .string(appliedLSN.description),
        ]
        if let lagSeconds { detail["lag_seconds"] = .double(lagSeconds) }
        return detail
    }
}

/// Reads lag from both servers.
struct LagMonitor {
    var slotName: String
    /// The subscription applying on the target; nil under relay apply (this process applies: nothing to read there).
    var subscriptionName: String?

    func read(source: Connection, target: Connection) async throws -> LagReading {
        let sourceRow = try await source.query(
            """
            SELECT pg_current_wal_lsn()::text,
                   (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1),
                   (SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1),
                   (SELECT coalesce(extract(epoch FROM r.replay_lag), -1)::text
                    FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1)
            """, [slotName]
        ).rows[0]
        guard let sourceLSN = sourceRow[0].flatMap(LSN.init) else {
            throw MigrationError(.streamApply, "cannot read pg_current_wal_lsn() on the source")
        }
        let applied = sourceRow[1].flatMap(LSN.init)
        if let loss = SlotLoss.describe(slot: slotName, exists: applied != nil, walStatus: sourceRow[2]) {
            throw MigrationError(
                .streamApply, loss, fix: "clean up with \(Setting.mode) cleanup and start the migration again", code: .slotLost)
        }
        guard let applied else { preconditionFailure("a slot that exists has a confirmed position") }
        // The walsender's replay_lag goes NULL (-1 here) once it is idle: nothing to apply means 0 s behind.
        let replayLag = sourceRow[3].flatMap(Double.init)
        let lagSeconds = sourceLSN.bytes(since: applied) == 0 ? 0 : replayLag.flatMap { $0 < 0 ? nil : $0 }
        guard let subscriptionName else {
            return LagReading(
                sourceLSN: sourceLSN, receivedLSN: nil, appliedLSN: applied, workerRunning: true, applyErrors: nil, lagSeconds: lagSeconds)
        }
        let version = await target.serverVersion
        let errorsColumn =
            version >= 150_000
            ? "(SELECT apply_error_count::text FROM pg_stat_subscription_stats WHERE subname = $1)" : "NULL"
        let targetRow = try await target.query(
            """
            SELECT (SELECT received_lsn::text FROM pg_stat_subscription WHERE subname = $1 AND relid IS NULL AND pid IS NOT NULL),
                   EXISTS (SELECT 1 FROM pg_stat_subscription WHERE subname = $1 AND relid IS NULL AND pid IS NOT NULL),
                   \(errorsColumn)
            """, [subscriptionName]
        ).rows[0]
        return LagReading(
            sourceLSN: sourceLSN, receivedLSN: targetRow[0].flatMap(LSN.init), appliedLSN: applied,
            workerRunning: targetRow[1] == "t", applyErrors: targetRow[2].flatMap { Int($0) }, lagSeconds: lagSeconds)
    }
}

/// Decides, reading by reading, which heartbeat events to emit: a plain
/// value type with no I/O, so its rules are unit-tested without a server.
struct LagStateMachine {
    enum Event: Equatable {
        case caughtUp
        case fellBehind
    }

    /// What "caught up" is measured in: seconds behind (the default), or bytes when asked.
    enum Threshold: Equatable, CustomStringConvertible {
        case seconds(Double)
        case bytes(UInt64)

        var description: String {
            switch self {
            case .seconds(let seconds): formatSeconds(seconds)
            case .bytes(let bytes): "\(bytes) bytes"
            }
        }
    }

    var threshold: Threshold
    /// How many readings in a row must be over twice the threshold before `FellBehind`: a healthy
    /// stream's lag wobbles around the threshold without ever meaning the target fell behind.
    var patience = 3
    private(set) var caughtUp = false
    private var readingsOver = 0

    init(threshold: Threshold) { self.threshold = threshold }

    /// `CaughtUp` once when lag first reaches the threshold; `FellBehind` once it stays over twice the
    /// threshold for ``patience`` readings; and so on. A reading whose time lag is unknown changes nothing.
    mutating func observe(lagBytes: UInt64, lagSeconds: Double?) -> Event? {
        let lag: Double, limit: Double
        switch threshold {
        case .bytes(let bytes): (lag, limit) = (Double(lagBytes), Double(bytes))
        case .seconds(let seconds):
            guard let lagSeconds else { return nil }
            (lag, limit) = (lagSeconds, seconds)
        }
        if !caughtUp {
            guard lag <= limit else { return nil }
            caughtUp = true
            readingsOver = 0
            return .caughtUp
        }
        readingsOver = lag > 2 * limit ? readingsOver + 1 : 0
        guard readingsOver >= patience else { return nil }
        caughtUp = false
        readingsOver = 0
        return .fellBehind
    }
}

/// Which lag readings become events: all of them until caught up; then at most one per `interval`, and
/// only when the lag changed or a minute passed (the fast poll stays internal). `everyReading` keeps them all.
struct HeartbeatPace {
    var interval: Duration
    var everyReading = false
    var quietFor: Duration = .seconds(60)
    private var last: (at: ContinuousClock.Instant, lagBytes: UInt64)?

    init(interval: Duration, everyReading: Bool = false) {
        self.interval = interval
        self.everyReading = everyReading
    }

    mutating func shouldReport(lagBytes: UInt64, caughtUp: Bool, now: ContinuousClock.Instant = .now) -> Bool {
        let report: Bool =
            if everyReading || !caughtUp { true } else if let last {
                now - last.at >= interval && (lagBytes != last.lagBytes || now - last.at >= quietFor)
            } else { true }
        if report { last = (now, lagBytes) }
        return report
    }
}

/// Whether the apply worker is making progress: a plain value type, unit-tested without a server.
struct ApplyHealth {
    enum Verdict: Equatable {
        case healthy
        /// The error count went up; the worker retries on its own.
        case newErrors(Int)
        /// Errors or no worker, and nothing applied, for at least the grace period.
        case failing(Duration)
    }

    var grace: Duration
    private var troubleSince: ContinuousClock.Instant?
    private var reportedErrors: Int?
    private var lastApplied: LSN?

    init(grace: Duration) { self.grace = grace }

    /// Trouble starts when the error count rises or no worker runs; it ends
    /// when the applied position moves or the target has caught up.
    mutating func observe(
        errors: Int?, workerRunning: Bool, applied: LSN, caughtUp: Bool, now: ContinuousClock.Instant = .now
    ) -> Verdict {
        defer { lastApplied = applied }
        let errorCount = errors ?? 0
        let baseline = reportedErrors ?? errorCount  // the first reading sets the baseline
        let newErrors = errorCount > baseline
        reportedErrors = max(baseline, errorCount)
        let progressed = lastApplied.map { applied > $0 } ?? false
        if progressed || caughtUp { troubleSince = nil }
        if newErrors || !workerRunning { troubleSince = troubleSince ?? now }
        if let since = troubleSince, now - since >= grace { return .failing(now - since) }
        return newErrors ? .newErrors(errorCount) : .healthy
    }
}

/// Reads the target server's log for the reason an apply worker failed.
enum ServerLog {
    /// The last error of this subscription's apply worker in the current log
    /// file — the ERROR line (and its DETAIL) whose CONTEXT names the
    /// subscription's replication origin — when the role may read the log
    /// (superuser or pg_read_server_files) and the server logs to a file it
    /// knows (`logging_collector`). Nil otherwise: the caller points to the log.
    static func lastApplyError(of subscription: String, on target: Connection) async -> String? {
        guard let oid = try? await target.scalar("SELECT oid::text FROM pg_subscription WHERE subname = $1", [subscription]),
            let file = try? await target.scalar("SELECT pg_current_logfile()"),
            // Bytes, not text: pg_read_file refuses a window that starts inside a multibyte character.
            let base64 = try? await target.scalar(
                "SELECT encode(pg_read_binary_file($1, greatest(0, (pg_stat_file($1)).size - 1048576), 1048576), 'base64')", [file]),
            let bytes = Data(base64Encoded: base64, options: .ignoreUnknownCharacters)
        else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        let lines = text.split(separator: "\n").map(String.init)
        guard let context = lines.lastIndex(where: { $0.contains("CONTEXT:") && $0.contains("replication origin \"pg_\(oid)\"") }),
            let error = lines[..<context].lastIndex(where: { $0.contains("ERROR:") })
        else { return nil }
        var message = lines[error].components(separatedBy: "ERROR:").last!.trimmingCharacters(in: .whitespaces)
        if let detail = lines[error..<context].first(where: { $0.contains("DETAIL:") }) {
            message += " (\(detail.components(separatedBy: "DETAIL:").last!.trimmingCharacters(in: .whitespaces)))"
        }
        return message
    }
}
