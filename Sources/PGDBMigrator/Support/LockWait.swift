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
        case backend(String)
        /// The same for every session with this `application_name` (a child process's, which
        /// may open several: `pg_restore --jobs`).
        case application(String)
        /// The same for a subscription's apply and table-sync workers.
        case subscription(String)
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
        return try await watching(what, blockers: .backend(pid), operation)
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
                if case .transactions(let start) = wait {
                    blockers = try await probe!.query(Self.olderTransactionsSQL, [start]).rows
                    waitingFor = "transactions that were writing when it began to end"
                } else {
                    let pids = try await Self.waitingSessions(wait, on: probe!)
                    blockers = try await probe!.query(Self.blockersSQL, [pids]).rows
                    waitingFor = blockers.isEmpty ? nil : try await probe!.scalar(Self.waitingForSQL, [pids])
                }
                guard !blockers.isEmpty else {
                    blockedSince = nil
                    continue
                }
                let now = ContinuousClock.now
                let since = blockedSince ?? now - pollEvery
                blockedSince = since
                let waiting = waitingFor ?? "a lock"
                let who = blockers.map(Self.describe)
                let seconds = Int((now - since).seconds)
                let detail: [String: EventValue] = [
                    "waited_seconds": .int(seconds), "blocking_pids": .list(blockers.map { $0[0]! }), "waiting_for": .string(waiting),
                ]
                if now - since >= timeout {
                    throw MigrationError(
                        stage, "gave up after \(seconds) s waiting for \(waiting) (\(what)), held by " + who.joined(separator: "; "),
                        fix: "let that session finish, or end it (SELECT pg_terminate_backend(pid)), or raise \(Setting.lockTimeout); "
                            + "then rerun the same command with \(Setting.resume)", code: .lockTimeout)
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

    /// The sessions whose lock waits `wait` watches, as an int array literal.
    private static func waitingSessions(_ wait: Blockers, on probe: Connection) async throws -> String {
        switch wait {
        case .backend(let pid): "{\(pid)}"
        case .application(let name): try await probe.scalar(applicationSessionsSQL, [name]) ?? "{}"
        case .subscription(let name): try await probe.scalar(subscriptionWorkersSQL, [name]) ?? "{}"
        case .transactions: "{}"
        }
    }

    /// A row of ``sessionsSQL``, ``blockersSQL`` or ``olderTransactionsSQL`` in words.
    static func describe(_ row: [String?]) -> String {
        "pid \(row[0] ?? "?") (\(row[1] ?? "?"), \(row[2] ?? "?"), from \(row[3] ?? "?"), \(row[4] ?? "?")): \(row[5] ?? "")"
    }

    /// The sessions `$1` (an int array), with what they are doing.
    static let sessionsSQL = """
        SELECT a.pid::text, coalesce(a.usename, '?'), coalesce(nullif(a.application_name, ''), 'no application name'),
               coalesce(host(a.client_addr), 'local socket'), coalesce(a.state, '?'),
               coalesce(left(regexp_replace(a.query, '\\s+', ' ', 'g'), 200), '')
        FROM pg_stat_activity a WHERE a.pid = ANY ($1::int[])
        ORDER BY 1
        """

    /// The sessions holding up any of `$1` (an int array), with what they are doing.
    static let blockersSQL = """
        WITH waiting AS (SELECT unnest($1::int[]) AS pid),
        blocking AS (SELECT DISTINCT unnest(pg_blocking_pids(pid)) AS pid FROM waiting)
        SELECT a.pid::text, coalesce(a.usename, '?'), coalesce(nullif(a.application_name, ''), 'no application name'),
               coalesce(host(a.client_addr), 'local socket'), coalesce(a.state, '?'),
               coalesce(left(regexp_replace(a.query, '\\s+', ' ', 'g'), 200), '')
        FROM pg_stat_activity a WHERE a.pid IN (SELECT pid FROM blocking)
          -- one of several sessions of a child process may wait on another (pg_restore --jobs): not an outsider
          AND a.pid NOT IN (SELECT pid FROM waiting)
        UNION ALL
        -- a prepared transaction holds its locks with no session: pg_blocking_pids says pid 0
        SELECT 'prepared transaction ' || quote_literal(p.gid), p.owner::text, 'database ' || p.database, '-',
               'prepared at ' || p.prepared::text, '(COMMIT PREPARED or ROLLBACK PREPARED ends it)'
        FROM pg_prepared_xacts p WHERE 0 IN (SELECT pid FROM blocking)
        ORDER BY 1
        """

    /// The sessions of a child process, by the `application_name` it was given.
    static let applicationSessionsSQL = "SELECT coalesce(array_agg(pid), '{}')::text FROM pg_stat_activity WHERE application_name = $1"

    /// A subscription's workers (apply, table sync) on the target.
    static let subscriptionWorkersSQL =
        "SELECT coalesce(array_agg(pid), '{}')::text FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL"

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

    /// What one of `$1` (an int array) waits for, in words: the lock mode and the relation, when it is one.
    static let waitingForSQL = """
        SELECT l.mode || ' lock on ' || coalesce(l.relation::regclass::text, l.locktype)
        FROM pg_locks l WHERE l.pid = ANY ($1::int[]) AND NOT l.granted LIMIT 1
        """
}
