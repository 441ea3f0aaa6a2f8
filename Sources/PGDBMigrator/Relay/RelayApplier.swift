import PostgresClient

/// Relay apply: this process reads the slot's changes over a replication
/// connection to the source and applies them to the target over an ordinary
/// one, so the target never connects to the source.
///
/// One target session applies the source's transactions one after the other,
/// in commit order, as PostgreSQL's own apply worker does: with
/// `session_replication_role = replica` (no triggers, no foreign-key checks:
/// the source already checked them) and `row_security = off`. Changes go to the
/// target in bounded batches as they arrive (``RelayApplySession``), so a
/// transaction of any size is never held in memory.
///
/// Exactly once: the target session is bound to a replication origin, and each
/// applied transaction's commit records the source position it reached
/// (`pg_replication_origin_xact_setup`), atomically with its rows. A restart
/// asks the origin where it is and streams from there; the slot is told to
/// forget only what the origin durably holds.
struct RelayApplier: Sendable {
    var source: ConnectionString
    var target: ConnectionString
    var slot: String
    var publication: String
    /// The replication origin on the target (names starting `pg_` are reserved).
    var origin: String
    /// How often the slot hears how far the target durably got.
    var statusInterval: Duration = .seconds(1)
    /// Where large transactions streamed before their commit are kept until it: a directory of this run's
    /// own (in its state directory, on disk), or nil for a new one under `$TMPDIR`.
    var spoolDirectory: String? = nil
    /// Each logical message (`pg_logical_emit_message`): a transactional one once its transaction is applied.
    var onMessage: @Sendable (_ prefix: String, _ lsn: LSN) -> Void = { _, _ in }
    /// A lost connection (a server restarted, the network dropped), before each new attempt.
    var onReconnect: @Sendable (_ reason: String, _ retryIn: Duration) -> Void = { _, _ in }
    /// How long either server may stay unreachable before the apply gives up.
    var giveUpAfter: Duration = .seconds(300)

    /// Both sessions' `application_name`, so that lock waits can name what holds the apply up.
    var applicationName: String { Self.applicationName(slot: slot) }

    static func applicationName(slot: String) -> String { String(("pg_dbmigrator relay " + slot).prefix(63)) }

    /// Settings the source prints values with and the target reads them with, whatever the servers' defaults.
    static let textSettings =
        "-c DateStyle=ISO,MDY -c IntervalStyle=postgres -c extra_float_digits=3 -c TimeZone=UTC -c bytea_output=hex -c client_encoding=UTF8"

    /// `connection` with ``textSettings`` after any `options` of the user's own (a later `-c` wins).
    static func withTextSettings(_ connection: ConnectionString) -> ConnectionString {
        connection.setting("options", to: [connection["options"], textSettings].compactMap { $0 }.joined(separator: " "))
    }

    /// Applies until cancelled, or until an error (a change that finds no row on the target among them).
    /// A lost connection is not one: the apply starts again on fresh sessions from where the origin
    /// says the target durably got (a transaction cut short was rolled back with its connection), as
    /// PostgreSQL's own apply worker does after a restart.
    func run() async throws {
        var delay = Duration.seconds(1)
        var lostSince: ContinuousClock.Instant?
        while true {
            var progressed = false
            do {
                try await applyUntilLost { progressed = true }
            } catch let error as PostgresError where Self.isRetryable(error) {
                if progressed { (lostSince, delay) = (nil, .seconds(1)) }
                let since = lostSince ?? .now
                lostSince = since
                guard ContinuousClock.now - since <= giveUpAfter else {
                    throw MigrationError(
                        .streamApply, "relay apply lost its connection to a server for over \(giveUpAfter): \(error.message)",
                        fix: "nothing was dropped; when both servers are reachable, run again with \(Setting.resume)", code: .connection,
                        underlying: error)
                }
                onReconnect(error.message, delay)
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(15))
            }
        }
    }

    /// Drops the origin `name` on the target, if it is there (no session may have it set up).
    static func dropOrigin(_ name: String, on target: Connection) async throws {
        try await target.query("SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = $1", [name])
    }

    /// A lost connection, or what its aftermath looks like for a moment: the old walsender or target
    /// session still holding the slot or the origin (`object_in_use`).
    static func isRetryable(_ error: PostgresError) -> Bool {
        ControlSessions.isConnectionLoss(error) || error.sqlState == "55006"
    }

    /// One attempt: fresh sessions, streaming from the origin's durable position, until an error
    /// (cancellation is one); both sessions are closed before it returns, so the slot is free again.
    /// `progressed` hears of each applied transaction.
    private func applyUntilLost(progressed: () -> Void) async throws {
        let target = try await Connection.connect(
            Self.withTextSettings(self.target).setting("application_name", to: applicationName), label: "relay-apply")
        do {
            // Where the login may not set it, triggers fire and foreign keys are checked (commit order keeps them true).
            _ = try? await target.execute("SET session_replication_role = replica")
            // Rows are found by their key's index, as PostgreSQL's apply worker finds them: a generic plan's
            // sequential scan of a small, busy table reads every dead version of its rows.
            try await target.execute("SET row_security = off; SET synchronous_commit = off")
            try await target.query(
                "SELECT pg_replication_origin_create($1) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)", [origin]
            )
            try await target.query("SELECT pg_replication_origin_session_setup($1)", [origin])
            let durable = try await Self.durablePosition(on: target) ?? LSN(0)
            let stream = try await Connection.connect(
                Self.withTextSettings(source).setting("replication", to: "database")
                    .setting("application_name", to: applicationName), label: "relay-stream")
            do {
                try await stream.startReplication(try await startCommand(on: stream, from: durable))
                try await apply(from: stream, to: target, durable: durable, progressed: progressed)
            } catch {
                await stream.close()
                throw error
            }
        } catch {
            await target.close()
            throw error
        }
    }

    /// What the origin holds durably: its position once the target's WAL is flushed up to its last commit.
    private static func durablePosition(on target: Connection) async throws -> LSN? {
        try await target.scalar("SELECT pg_replication_origin_session_progress(true)::text").flatMap(LSN.init)
    }

    /// Decodes and applies the stream, telling the slot what the target durably holds, until an error.
    private func apply(from stream: Connection, to target: Connection, durable start: LSN, progressed: () -> Void) async throws -> Never {
        var durable = start
        var session = RelayApplySession(target: target, appliedThrough: start, onMessage: onMessage)
        var decoder = PgOutputDecoder()
        var streamed = StreamedTransactions(directory: spoolDirectory)
        defer { streamed.removeAll() }
        var received = durable
        var lastStatus = ContinuousClock.now
        while true {
            try Task.checkCancellation()
            var replyNow = false
            // While the target runs a pipeline, only what has already arrived is read: the answer is awaited
            // as soon as the stream pauses.
            let messages = try await stream.readReplicationMessages(timeout: session.isSending ? .zero : statusInterval)
            for message in messages {
                switch message {
                case .keepalive(let end, let replyRequested):
                    received = max(received, end)
                    replyNow = replyNow || replyRequested
                case .data(let start, let end, let data):
                    received = max(received, start, end)
                    try await apply(try decoder.decode(data), raw: data, streamed: &streamed, to: &session)
                }
            }
            // What arrived is sent on (its commits included) before waiting for more, and while the stream
            // pauses every answer is read.
            if try await (messages.isEmpty ? session.settle() : session.flush(unlessBusy: true)) > 0 { progressed() }
            if replyNow || ContinuousClock.now - lastStatus >= statusInterval {
                if try await session.collect() > 0 { progressed() }
                if !session.inTransaction { durable = try await Self.durablePosition(on: target) ?? durable }
                // The slot may forget what the target durably holds; between transactions, once every one that
                // wrote is durable, also what came after (transactions that changed nothing published).
                // (An idle walsender tells its position by itself while ours lags it: the slot catches up.)
                let flush = !session.inTransaction && durable >= session.lastAppliedEnd ? max(durable, received) : durable
                try await stream.sendStandbyStatus(write: received, flush: flush, apply: session.lastAppliedEnd)
                lastStatus = ContinuousClock.now
            }
        }
    }

    /// Applies one message, or keeps it while its streamed transaction is not committed; at that commit,
    /// applies the whole transaction in its place in the commit order.
    private func apply(
        _ message: PgOutputMessage, raw: [UInt8], streamed: inout StreamedTransactions, to session: inout RelayApplySession
    ) async throws {
        switch message {
        case .streamStart(let xid, _): try streamed.startBlock(xid)
        case .streamStop: streamed.stopBlock()
        case .streamAbort(let xid, let subtransaction): try streamed.abort(xid, subtransaction: subtransaction)
        case .streamCommit(let xid, let commitLSN, let endLSN, let commitTime):
            try await session.handle(.begin(finalLSN: commitLSN, commitTime: commitTime, xid: xid))
            if var messages = try streamed.committed(xid) {
                var decoder = PgOutputDecoder(inStreamBlock: true)
                while let bytes = try messages.next() { try await session.handle(try decoder.decode(bytes)) }
            }
            try await session.handle(.commit(commitLSN: commitLSN, endLSN: endLSN, commitTime: commitTime))
        default:
            if streamed.openBlock != nil {
                try streamed.keep(raw, subtransaction: message.streamedXid)
            } else {
                try await session.handle(message)
            }
        }
    }

    /// `START_REPLICATION` with the highest pgoutput protocol the source speaks, and logical messages where it has them.
    private func startCommand(on stream: Connection, from position: LSN) async throws -> String {
        let version = await stream.serverVersion
        let protocolVersion = version >= 160_000 ? 4 : version >= 150_000 ? 3 : version >= 140_000 ? 2 : 1
        var options = ["proto_version '\(protocolVersion)'", "publication_names " + SQL.literal(SQL.identifier(publication))]
        // Large transactions come before they commit (kept on this side until then), so the source does not
        // keep them on its disk; and logical messages.
        if version >= 140_000 { options += ["streaming 'on'", "messages 'true'"] }
        return "START_REPLICATION SLOT \(SQL.identifier(slot)) LOGICAL \(position) (\(options.joined(separator: ", ")))"
    }
}
