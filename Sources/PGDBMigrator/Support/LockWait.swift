import PostgresClient

/// No silent waits: while a statement waits on a lock, say every ten seconds
/// what it waits for and on whom (the blocking session's PID, user,
/// application, address and query), and after `timeout` of waiting give up
/// with the same information instead of hanging.
///
/// The statement's own session is watched from a second session on the same
/// server (`pg_blocking_pids`), opened only once the statement has run for a
/// second; time spent working rather than waiting never counts.
struct LockWait: Sendable {
    var server: Endpoint
    var events: EventEmitter
    var stage: Stage
    var timeout: Duration
    var reportEvery: Duration = .seconds(10)
    var pollEvery: Duration = .seconds(1)

    /// Who a wait is on.
    enum Blockers: Sendable {
        /// The sessions a backend's lock request waits behind (`pg_blocking_pids`).
        case locks(ofBackend: String)
        /// Transactions (and prepared transactions) that were writing before a moment
        /// (`timestamptz` text): what creating a logical slot waits for.
        case transactions(olderThan: String)
    }

    /// Runs `operation`, whose statements run on `session`, watching that session for lock waits.
    @discardableResult
    func watching<T: Sendable>(
        _ what: String, session: Connection, _ operation: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let pid = try await session.execute("SELECT pg_backend_pid()").rows.first?[0] ?? "0"
        return try await watching(what, blockers: .locks(ofBackend: pid), operation)
    }

    /// Runs `operation`, reporting `blockers` while there are any and giving up after `timeout` of them.
    @discardableResult
    func watching<T: Sendable>(
        _ what: String, blockers: Blockers, _ operation: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await operation() }
            group.addTask {
                try await watch(blockers, what: what)
                return nil
            }
            defer { group.cancelAll() }
            while let result = try await group.next() {
                if let result { return result }
            }
            throw CancellationError()
        }
    }

    /// Polls until cancelled (the operation finished) or the wait passes `timeout` (throws).
    private func watch(_ wait: Blockers, what: String) async throws {
        var probe: Connection?
        do {
            var blockedSince: ContinuousClock.Instant?
            var lastReport = ContinuousClock.now
            while true {
                try await Task.sleep(for: pollEvery)
                if probe == nil {
                    // Watching is a help, never a new way to fail: a server that has no session to spare for it
                    // (max_connections, a pooler) leaves the statement unwatched, as it was before.
                    do {
                        probe = try await server.connect(label: "lock watch", stage: stage)
                    } catch is CancellationError {
                        throw CancellationError()
                    } catch {
                        events.warning(stage, "cannot watch \(what) for lock waits: \(error)")
                        return
                    }
                }
                let blockers: [[String?]]
                let waitingFor: String?
                switch wait {
                case .locks(let pid):
                    blockers = try await probe!.query(Self.blockersSQL, [pid]).rows
                    waitingFor = blockers.isEmpty ? nil : try await probe!.scalar(Self.waitingForSQL, [pid])
                case .transactions(let start):
                    blockers = try await probe!.query(Self.olderTransactionsSQL, [start]).rows
                    waitingFor = "transactions that were writing when it began to end"
                }
                guard !blockers.isEmpty else {
                    blockedSince = nil
                    continue
                }
                let now = ContinuousClock.now
                let since = blockedSince ?? now - pollEvery
                blockedSince = since
                let waiting = waitingFor ?? "a lock"
                let who = blockers.map { "pid \($0[0]!) (\($0[1]!), \($0[2]!), from \($0[3]!), \($0[4]!)): \($0[5]!)" }
                let seconds = Int((now - since).seconds)
                let detail: [String: EventValue] = [
                    "waited_seconds": .int(seconds), "blocking_pids": .list(blockers.map { $0[0]! }), "waiting_for": .string(waiting),
                ]
                if now - since >= timeout {
                    throw MigrationError(
                        stage, "gave up after \(seconds) s waiting for \(waiting) (\(what)), held by " + who.joined(separator: "; "),
                        fix: "let that session finish, or end it (SELECT pg_terminate_backend(pid)), or raise --lock-timeout-secs; "
                            + "then rerun the same command with --resume")
                }
                if now - lastReport >= reportEvery {
                    lastReport = now
                    events.warning(stage, "waiting \(seconds) s for \(waiting) (\(what)), held by " + who.joined(separator: "; "), detail)
                }
            }
        } catch {
            await probe?.close()
            throw error
        }
    }

    /// The sessions holding up `$1`, with what they are doing.
    static let blockersSQL = """
        SELECT a.pid::text, coalesce(a.usename, '?'), coalesce(nullif(a.application_name, ''), 'no application name'),
               coalesce(host(a.client_addr), 'local socket'), coalesce(a.state, '?'),
               coalesce(left(regexp_replace(a.query, '\\s+', ' ', 'g'), 200), '')
        FROM pg_stat_activity a WHERE a.pid = ANY (pg_blocking_pids($1::int))
        UNION ALL
        -- a prepared transaction holds its locks with no session: pg_blocking_pids says pid 0
        SELECT 'prepared transaction ' || quote_literal(p.gid), p.owner::text, 'database ' || p.database, '-',
               'prepared at ' || p.prepared::text, '(COMMIT PREPARED or ROLLBACK PREPARED ends it)'
        FROM pg_prepared_xacts p WHERE 0 = ANY (pg_blocking_pids($1::int))
        ORDER BY 1
        """

    /// Transactions with an xid that began before `$1`, and prepared transactions: a logical
    /// slot becomes consistent only once every one of them has ended.
    static let olderTransactionsSQL = """
        SELECT a.pid::text, coalesce(a.usename, '?'), coalesce(nullif(a.application_name, ''), 'no application name'),
               coalesce(host(a.client_addr), 'local socket'), coalesce(a.state, '?') || ' since ' || a.xact_start::text,
               coalesce(left(regexp_replace(a.query, '\\s+', ' ', 'g'), 200), '')
        FROM pg_stat_activity a
        WHERE a.backend_xid IS NOT NULL AND a.xact_start < $1::timestamptz AND a.pid <> pg_backend_pid()
        UNION ALL
        SELECT 'prepared transaction ' || quote_literal(p.gid), p.owner::text, 'database ' || p.database, '-',
               'prepared at ' || p.prepared::text, '(COMMIT PREPARED or ROLLBACK PREPARED ends it)'
        FROM pg_prepared_xacts p WHERE p.prepared < $1::timestamptz
        ORDER BY 1
        """

    /// What `$1` waits for, in words: the lock mode and the relation, when it is one.
    static let waitingForSQL = """
        SELECT l.mode || ' lock on ' || coalesce(l.relation::regclass::text, l.locktype)
        FROM pg_locks l WHERE l.pid = $1::int AND NOT l.granted LIMIT 1
        """
}
