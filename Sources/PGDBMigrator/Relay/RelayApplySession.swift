import PostgresClient

/// The target side of relay apply: turns decoded changes into statements on
/// one target session and sends them in as few round trips as it can.
///
/// Statements queue up (libpq pipeline mode) and go when a batch is full or
/// nothing more has arrived. The source's transactions that arrived together
/// are applied in one target transaction, in the source's order, committed with
/// the origin position of the last: the target still shows a prefix of the
/// source's history, and a restart applies the whole group again. Each
/// distinct statement is prepared once per session, so the target parses and
/// plans it once. An UPDATE or DELETE that finds no row raises an error inside
/// the server (so that the pipeline stops before that transaction's COMMIT),
/// reported here as the table's missing row.
struct RelayApplySession {
    let target: Connection
    /// Transactions whose commit is at or before this were applied by an earlier attempt: skipped.
    let appliedThrough: LSN
    let onMessage: @Sendable (_ prefix: String, _ lsn: LSN) -> Void

    private var relations: [UInt32: RelayRelation] = [:]
    /// Each distinct statement's prepared name in this session; forgotten when a relation is described again.
    private var preparedNames: [String: String] = [:]
    private var preparedCount = 0
    private var transaction: Transaction?
    private var pending: [Connection.PipelinedStatement] = []
    /// For each pending statement, the change it applies (for the error that names the table), if it must touch one row.
    private var oneRow: [(what: String, table: QualifiedName, commit: LSN)?] = []
    private var pendingBytes = 0
    /// A target transaction is open (its BEGIN queued or sent).
    private var openOnTarget = false
    /// The source transactions done inside it, not yet committed there: their ends and logical messages.
    private var completed: [(end: LSN, messages: [(String, LSN)])] = []
    private var lastCommitTime: Int64 = 0
    /// Part of the open target transaction went without its COMMIT (a round trip fell inside a source
    /// transaction): it commits at the next source commit, so a busy stream never keeps it open.
    private var sentWithoutCommit = false
    /// The end of the last transaction that wrote on the target and whose COMMIT returned.
    private(set) var lastAppliedEnd = LSN(0)

    private struct Transaction {
        var finalLSN: LSN
        /// Already applied by an earlier attempt.
        var skipping: Bool
        /// It changed something on the target.
        var wrote = false
        var messages: [(String, LSN)] = []
    }

    /// At most this many statements, or bytes of them, wait for one round trip: everything is sent before
    /// anything is read, so a pipeline must fit the sockets' buffers.
    static let pipelineStatements = 512
    static let pipelineBytes = 512 * 1024

    init(target: Connection, appliedThrough: LSN, onMessage: @escaping @Sendable (String, LSN) -> Void) {
        self.target = target
        self.appliedThrough = appliedThrough
        self.onMessage = onMessage
        lastAppliedEnd = appliedThrough
    }

    /// Inside a source transaction, or a target transaction is open.
    var inTransaction: Bool { transaction != nil || openOnTarget }

    mutating func handle(_ change: PgOutputMessage) async throws {
        switch change {
        case .begin(let finalLSN, _, _):
            transaction = Transaction(finalLSN: finalLSN, skipping: finalLSN < appliedThrough)
        case .commit(_, let endLSN, let commitTime):
            guard let finished = transaction else {
                throw MigrationError(.streamApply, "the replication stream committed a transaction it never began")
            }
            transaction = nil
            if openOnTarget {
                // Done in the open target transaction; committed with the others at the next round trip.
                completed.append((endLSN, finished.messages))
                lastCommitTime = commitTime
                if full || sentWithoutCommit { try await flush() }
            } else {
                // Nothing written on the target: its messages are applied once what came before is.
                try await flush()
                for (prefix, lsn) in finished.messages { onMessage(prefix, lsn) }
            }
        case .relation(let relation):
            // Its columns or their types may have changed: statements are prepared again from here.
            relations[relation.oid] = RelayRelation(relation)
            preparedNames = [:]
        case .origin, .type:
            break
        case .message(_, let transactional, let lsn, let prefix, _):
            if transactional, transaction != nil {
                transaction?.messages.append((prefix, lsn))
            } else {
                try await flush()
                onMessage(prefix, lsn)
            }
        case .insert(_, let oid, let new):
            try await add(try relation(oid).insert(new))
        case .update(_, let oid, let old, let new):
            let table = try relation(oid)
            try await add(try table.update(old: old, new: new), oneRowOf: ("UPDATE", table.name))
        case .delete(_, let oid, let old):
            let table = try relation(oid)
            try await add(try table.delete(old: old), oneRowOf: ("DELETE", table.name))
        case .truncate(_, _, let restartIdentity, let oids):
            // Exactly the tables the source truncated, never cascading further (as PostgreSQL's apply).
            let names = try oids.map { try relation($0).name.description }
            try await add(
                .init(
                    sql: "TRUNCATE ONLY \(names.joined(separator: ", "))" + (restartIdentity ? " RESTART IDENTITY" : "") + " RESTRICT",
                    parameters: []))
        case .streamStart, .streamStop, .streamCommit, .streamAbort:
            throw MigrationError(.streamApply, "relay apply received a streamed transaction, which it did not ask for")
        }
    }

    private func relation(_ oid: UInt32) throws -> RelayRelation {
        guard let relation = relations[oid] else {
            throw MigrationError(.streamApply, "the replication stream changed relation \(oid) before describing it")
        }
        return relation
    }

    /// Queues one change's statement in its transaction (begun with the first). `oneRowOf`: it must touch
    /// exactly one row; none is an error inside the server (`1 / 0`), which stops the apply, never a skip.
    private mutating func add(_ statement: RelayRelation.Statement, oneRowOf change: (what: String, table: QualifiedName)? = nil)
        async throws
    {
        guard var current = transaction else {
            throw MigrationError(.streamApply, "the replication stream sent a change outside a transaction")
        }
        guard !current.skipping else { return }
        if !current.wrote {
            current.wrote = true
            transaction = current
        }
        if !openOnTarget {
            openOnTarget = true
            queue(.init("BEGIN"))
        }
        let sql = change == nil ? statement.sql : "WITH changed AS (\(statement.sql)) SELECT 1 / count(*)::int FROM changed"
        let name = preparedNames[sql]
        if name == nil { preparedCount += 1 }
        let statementName = name ?? "relay_\(preparedCount)"
        if name == nil { preparedNames[sql] = statementName }
        queue(
            .init(sql, statement.parameters, prepared: statementName, prepares: name == nil),
            oneRowOf: change.map { ($0.what, $0.table, current.finalLSN) })
        if full { try await flush() }
    }

    private mutating func queue(
        _ statement: Connection.PipelinedStatement, oneRowOf: (what: String, table: QualifiedName, commit: LSN)? = nil
    ) {
        pending.append(statement)
        oneRow.append(oneRowOf)
        pendingBytes += statement.sql.utf8.count + statement.parameters.reduce(0) { $0 + ($1?.utf8.count ?? 0) }
    }

    private var full: Bool { pending.count >= Self.pipelineStatements || pendingBytes >= Self.pipelineBytes }

    /// Sends what is queued in one round trip, committing the source transactions done in it when
    /// none is half-way; returns how many it committed.
    @discardableResult
    mutating func flush() async throws -> Int {
        let committing = openOnTarget && transaction == nil && !completed.isEmpty
        if committing, let last = completed.last {
            // The origin's position is set last, right before COMMIT, and deferred constraints are checked
            // before it: from PostgreSQL 16 an aborted transaction's record also advances the origin, so a
            // COMMIT that failed after setting it would have that group skipped after a restart.
            queue(.init("SET CONSTRAINTS ALL IMMEDIATE"))
            queue(
                .init(
                    "SELECT pg_replication_origin_xact_setup($1::pg_lsn, timestamptz '2000-01-01 00:00:00+00' + $2::bigint * interval '1 microsecond')",
                    [last.end.description, String(lastCommitTime)]))
            queue(.init("COMMIT"))
        }
        guard !pending.isEmpty else { return 0 }
        let statements = pending
        let changes = oneRow
        pending = []
        oneRow = []
        pendingBytes = 0
        do {
            _ = try await target.runPipeline(statements)
        } catch let failure as Connection.PipelineError {
            if failure.error.sqlState == "22012", let change = changes[failure.index] {
                throw MigrationError(
                    .streamApply,
                    "\(change.what) of a row of \(change.table.shown) found no such row on the target (the source's transaction "
                        + "committing at \(change.commit)): the target no longer matches the source",
                    fix: "find what changed that table on the target besides this migration; nothing from that transaction on was applied")
            }
            throw failure.error
        }
        guard committing else {
            sentWithoutCommit = openOnTarget
            return 0
        }
        sentWithoutCommit = false
        let commits = completed
        completed = []
        openOnTarget = false
        for commit in commits {
            lastAppliedEnd = commit.end
            for (prefix, lsn) in commit.messages { onMessage(prefix, lsn) }
        }
        return commits.count
    }
}
