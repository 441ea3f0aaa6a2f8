import Foundation
import PostgresClient

/// Relay apply: this process reads the slot's changes over a replication
/// connection to the source and applies them to the target over an ordinary
/// one, so the target never connects to the source.
///
/// Target sessions apply the source's transactions with
/// `session_replication_role = replica` (no triggers, no foreign-key checks:
/// the source already checked them) and `row_security = off`, as PostgreSQL's
/// own apply worker does. Where asked for, several run transactions at once and
/// commit them in the source's order (``RelayScheduler``); one alone where the
/// login may not set that role. Values travel in binary where the copy would
/// send them so (built-in types within one major version, plain types across
/// major versions), as text otherwise.
/// Changes go to the target in bounded batches (``RelayApplySession``), so a
/// transaction of any size is never held in memory.
///
/// Exactly once: each target session is bound to a replication origin of its
/// own, and each commit records the source position it reached
/// (`pg_replication_origin_xact_setup`), atomically with its rows. A restart
/// streams from the highest position the origins hold; the slot is told to
/// forget only what they durably hold.
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
    /// Target sessions applying at once (``RelayScheduler``), where the login may set
    /// `session_replication_role` (else the target's triggers and foreign-key checks take row locks the
    /// apply cannot foresee) and the server has an origin to spare for each.
    /// (``OnlineSettings/relaySessions``.)
    var sessions = 1
    /// At most this many source transactions commit as one target transaction when sessions apply in parallel
    /// (tests set 1, so that every transaction commits on its own, the sessions taking turns).
    /// nil: as one session groups them (``RelayApplySession/batchedGroupTransactions`` where changes are batched).
    var groupTransactions: Int? = nil

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
        var sessions = self.sessions
        while true {
            var progressed = false
            do {
                try await applyUntilLost(sessions: sessions) { progressed = true }
            } catch let error as PostgresError where error.sqlState == "40P01" && sessions > 1 {
                // Row locks nobody foresaw (a trigger, a constraint the target has and the source had not): the
                // group that lost was rolled back; one session in source order cannot deadlock with itself.
                sessions = 1
                onReconnect("parallel apply deadlocked on the target (\(error.message)); going on with one session", .zero)
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

    /// Drops the origin `name` on the target, and those of its other sessions, if they are there.
    ///
    /// A session that set an origin up holds it until its backend exits, a moment after the client closed it
    /// (the apply's sessions have just been, at cutover; a killed run's may linger longer): an origin in use is
    /// tried again until `timeout`, the wait reported every 10 s naming the holder, then the same is the error.
    static func dropOrigin(_ name: String, on target: Connection, timeout: Duration, stage: Stage, events: EventEmitter?) async throws {
        let started = ContinuousClock.now
        var lastReport = started
        while true {
            do {
                try await target.query("SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE \(ownOrigins)", [name])
                return
            } catch let error as PostgresError where error.sqlState == "55006" {
                let waited = "\(Int((ContinuousClock.now - started).seconds)) s"
                let origin = "relay apply's replication origin \(SQL.identifier(name)) on the target"
                let timedOut = ContinuousClock.now - started >= timeout
                if timedOut || ContinuousClock.now - lastReport >= .seconds(10) {
                    let holder = try await originHolder(error, on: target)
                    guard !timedOut else {
                        throw MigrationError(
                            stage, "gave up after \(waited) waiting for \(origin) to be released, held by \(holder)",
                            fix:
                                "end that session (SELECT pg_terminate_backend(pid)), then drop the origin: SELECT pg_replication_origin_drop(roname) "
                                + "FROM pg_replication_origin WHERE roname = \(SQL.literal(name)) OR roname LIKE \(SQL.literal(name + "/%")); "
                                + "or raise \(Setting.lockTimeout)", code: .lockTimeout, underlying: error)
                    }
                    lastReport = ContinuousClock.now
                    events?.warning(
                        stage, "waiting \(waited) for \(origin) to be released before dropping it, held by \(holder)",
                        ["origin": .string(name)])
                }
                try await Task.sleep(for: .milliseconds(20))  // the cutover's teardown waits on this: writes may be held
            }
        }
    }

    /// Who holds an origin, from the server's "in use by PID n" (`error`): the live sessions among the numbers
    /// it names (in whatever language the server speaks), in ``LockWait``'s words; else its message.
    private static func originHolder(_ error: PostgresError, on target: Connection) async throws -> String {
        let numbers = error.message.matches(of: /[0-9]+/).map { String($0.output) }
        let sessions = try await target.query(LockWait.sessionsSQL, ["{\(numbers.joined(separator: ","))}"]).rows
        return sessions.isEmpty ? "another session (\(error.message))" : sessions.map(LockWait.describe).joined(separator: "; ")
    }

    /// The origin of the apply's `session`-th target session: the first keeps the run's own name.
    static func origin(_ name: String, session: Int) -> String { session == 0 ? name : "\(name)/\(session)" }

    /// The origins of the apply whose first origin is `$1` (no slot name, and so no other run's origin, has a `/`).
    static let ownOrigins = "(roname = $1 OR (starts_with(roname, $1 || '/') AND substr(roname, length($1) + 2) ~ '^[0-9]+$'))"

    /// A lost connection, or what its aftermath looks like for a moment: the old walsender or target
    /// session still holding the slot or the origin (`object_in_use`).
    static func isRetryable(_ error: PostgresError) -> Bool {
        ControlSessions.isConnectionLoss(error) || error.sqlState == "55006"
    }

    /// One attempt: fresh sessions, streaming from the origin's durable position, until an error
    /// (cancellation is one); both sessions are closed before it returns, so the slot is free again.
    /// `progressed` hears of each applied transaction.
    private func applyUntilLost(sessions wanted: Int, progressed: () -> Void) async throws {
        var targets: [Connection] = []
        do {
            targets.append(try await connectTarget(session: 0))
            // Where the login may not set it, triggers fire and foreign keys are checked (commit order keeps them
            // true), and one session applies.
            let replicaRole = (try? await targets[0].execute("SET session_replication_role = replica")) != nil
            // The resume position is the highest of all the sessions' origins: reading another session's takes
            // pg_replication_origin_progress.
            let readsAll =
                try await targets[0].scalar(
                    "SELECT has_function_privilege('pg_replication_origin_progress(text, boolean)', 'EXECUTE')") == "t"
            if !readsAll,
                try await targets[0].scalar("SELECT count(*) FROM pg_replication_origin WHERE \(Self.ownOrigins)", [origin]) != "1"
            {
                throw MigrationError(
                    .streamApply, "relay apply cannot read where its other target sessions got to (an earlier run applied with several)",
                    fix: "as a superuser on the target: GRANT EXECUTE ON FUNCTION pg_replication_origin_progress(text, boolean) TO "
                        + (try await targets[0].scalar("SELECT quote_ident(current_user)") ?? "the target login")
                        + "; then run again with \(Setting.resume)")
            }
            for session in 1..<(replicaRole && readsAll ? max(wanted, 1) : 1) {
                do {
                    let target = try await connectTarget(session: session)
                    try await target.execute("SET session_replication_role = replica")
                    targets.append(target)
                } catch let error as PostgresError where !Self.isRetryable(error) {
                    break  // no origin to spare (max_replication_slots, max_active_replication_origins): fewer sessions
                }
            }
            let durable = try await durablePosition(on: targets[0], readsAll: readsAll) ?? LSN(0)
            let targetTables = try await RelayTargetTable.read(on: targets[0])
            let batchesChanges = replicaRole ? try await Self.nothingTells(on: targets[0]) : false
            let stream = try await Connection.connect(
                Self.withTextSettings(source).setting("replication", to: "database")
                    .setting("application_name", to: applicationName), label: "relay-stream")
            do {
                let binary = try await binaryValues(on: stream, targetVersion: await targets[0].serverVersion)
                try await stream.startReplication(try await startCommand(on: stream, from: durable, binary: binary))
                try await apply(
                    from: stream, to: targets, durable: durable, readsAll: readsAll, targetTables: targetTables,
                    batchesChanges: batchesChanges, progressed: progressed)
            } catch {
                await stream.close()
                throw error
            }
        } catch {
            for target in targets { await target.close() }
            throw error
        }
    }

    /// Nothing on the target runs as rows are written by a session with `session_replication_role = replica`:
    /// no trigger enabled ALWAYS or REPLICA, no rule. Then the order of changes to different tables inside one
    /// target transaction cannot be told, and changes may wait to go many rows to a statement.
    private static func nothingTells(on target: Connection) async throws -> Bool {
        try await target.scalar(
            """
            SELECT NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgenabled IN ('A', 'R'))
               AND NOT EXISTS (SELECT 1 FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
                                WHERE c.relkind IN ('r', 'p') AND r.rulename <> '_RETURN')
            """) == "t"
    }

    /// A target session of the apply, bound to its own replication origin.
    private func connectTarget(session: Int) async throws -> Connection {
        let target = try await Connection.connect(
            Self.withTextSettings(self.target).setting("application_name", to: applicationName), label: "relay-apply")
        do {
            try await target.execute("SET row_security = off; SET synchronous_commit = off")
            let name = Self.origin(origin, session: session)
            try await target.query(
                "SELECT pg_replication_origin_create($1) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)", [name])
            try await target.query("SELECT pg_replication_origin_session_setup($1)", [name])
            return target
        } catch {
            await target.close()
            throw error
        }
    }

    /// What the apply's origins hold durably: the highest of their positions, once the target's WAL is
    /// flushed up to that commit (the sessions commit in the source's order, so all before it are there).
    /// Without `readsAll`, the apply has one session and one origin, `target`'s own.
    private func durablePosition(on target: Connection, readsAll: Bool) async throws -> LSN? {
        try await target.scalar(
            readsAll
                ? "SELECT max(pg_replication_origin_progress(roname, true))::text FROM pg_replication_origin WHERE \(Self.ownOrigins)"
                : "SELECT pg_replication_origin_session_progress(true)::text", readsAll ? [origin] : []
        ).flatMap(LSN.init)
    }

    /// Decodes and applies the stream, telling the slot what the target durably holds, until an error.
    private func apply(
        from stream: Connection, to targets: [Connection], durable start: LSN, readsAll: Bool,
        targetTables: [QualifiedName: RelayTargetTable], batchesChanges: Bool, progressed: () -> Void
    ) async throws
        -> Never
    {
        var durable = start
        var session = RelayScheduler(
            sessions: targets.map {
                RelayApplySession(
                    target: $0, appliedThrough: start, targetTables: targetTables, batchesChanges: batchesChanges,
                    onMessage: onMessage)
            }, appliedThrough: start,
            groupTransactions: groupTransactions ?? RelayApplySession.groupLimit(batchesChanges: batchesChanges),
            onMessage: onMessage)
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
            let appliedBefore = session.lastAppliedEnd
            if messages.isEmpty { try await session.settle() } else { try await session.flush(unlessBusy: true) }
            if replyNow || ContinuousClock.now - lastStatus >= statusInterval {
                try await session.collect()
                // On a session with nothing open: the highest position the origins hold, what has committed.
                if let target = session.idleTarget {
                    durable = try await durablePosition(on: target, readsAll: readsAll) ?? durable
                }
                // The slot may forget what the target durably holds; between transactions, once every one that
                // wrote is durable, also what came after (transactions that changed nothing published).
                // (An idle walsender tells its position by itself while ours lags it: the slot catches up.)
                let flush = !session.inTransaction && durable >= session.lastAppliedEnd ? max(durable, received) : durable
                try await stream.sendStandbyStatus(write: received, flush: flush, apply: session.lastAppliedEnd)
                lastStatus = ContinuousClock.now
            }
            if session.lastAppliedEnd > appliedBefore { progressed() }
        }
    }

    /// Applies one message, or keeps it while its streamed transaction is not committed; at that commit,
    /// applies the whole transaction in its place in the commit order.
    private func apply(
        _ message: PgOutputMessage, raw: [UInt8], streamed: inout StreamedTransactions, to session: inout RelayScheduler
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

    /// Whether values travel in binary, as the copy sends them where it can (from PostgreSQL 14 on both sides, where
    /// pgoutput can): between servers of one major version when every column the publication carries has a
    /// built-in type with binary I/O (``TableCatalog/binarySafe(_:)``); between major versions when every one is
    /// of the plain types whose binary form has not changed (``Verifier/valueHashableSQL(_:)``). Else as text,
    /// which the target parses with its own types. Asked on the replication connection itself (which takes SQL by
    /// the simple query protocol only).
    private func binaryValues(on stream: Connection, targetVersion: Int) async throws -> Bool {
        let sourceVersion = await stream.serverVersion
        guard sourceVersion >= 140_000, targetVersion >= 140_000 else { return false }
        let predicate =
            sourceVersion / 10_000 == targetVersion / 10_000 ? TableCatalog.binarySafe("c.oid") : Verifier.valueHashableSQL("c.oid")
        let safe = try await stream.execute(
            """
            SELECT coalesce(bool_and(\(predicate)), true)::text
              FROM pg_publication_tables p JOIN pg_namespace n ON n.nspname = p.schemaname
              JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
             WHERE p.pubname = \(SQL.literal(publication))
            """
        ).rows.first?.first
        return safe == "true"
    }

    /// `START_REPLICATION` with the highest pgoutput protocol the source speaks, logical messages where it has them,
    /// and values in binary when `binary`.
    private func startCommand(on stream: Connection, from position: LSN, binary: Bool) async throws -> String {
        let version = await stream.serverVersion
        let protocolVersion = version >= 160_000 ? 4 : version >= 150_000 ? 3 : version >= 140_000 ? 2 : 1
        var options = ["proto_version '\(protocolVersion)'", "publication_names " + SQL.literal(SQL.identifier(publication))]
        // Large transactions come before they commit (kept on this side until then), so the source does not
        // keep them on its disk; and logical messages.
        if version >= 140_000 { options += ["streaming 'on'", "messages 'true'"] }
        if binary { options.append("binary 'true'") }
        return "START_REPLICATION SLOT \(SQL.identifier(slot)) LOGICAL \(position) (\(options.joined(separator: ", ")))"
    }
}
