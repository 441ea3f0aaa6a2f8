import PostgresClient

/// The target side of relay apply: turns decoded changes into statements on
/// one target session and sends them in as few round trips as it can.
///
/// Statements queue up and go in one round trip (libpq pipeline mode) when a
/// batch is full, when the target has answered the batch before, or when
/// nothing more has arrived; the next batch is decoded while the target runs
/// one. Up to ``groupTransactions`` source transactions that arrived together
/// are applied in one target transaction, in the source's order, committed
/// with the origin position of the last: the target still shows a prefix of
/// the source's history, and a restart applies the whole group again. Each
/// kind of statement is prepared once per session, so the target parses it
/// once. An UPDATE or DELETE that finds no row raises an error inside the
/// server (so that the pipeline stops before that transaction's COMMIT),
/// reported here as the table's missing row.
struct RelayApplySession {
    let target: Connection
    /// Transactions whose commit is at or before this were applied by an earlier attempt: skipped.
    let appliedThrough: LSN
    let onMessage: @Sendable (_ prefix: String, _ lsn: LSN) -> Void
    /// The target's tables, as the apply started.
    let targetTables: [QualifiedName: RelayTargetTable]
    /// Changes may wait, to go many rows to a statement (``Batch``): only where nothing on the target could
    /// tell, as the apply runs (no trigger fires under `session_replication_role = replica`, no rule).
    let batchesChanges: Bool

    private var relations: [UInt32: RelayRelation] = [:]
    /// Each statement shape's text and prepared name in this session; forgotten when a relation is described again.
    private var prepared: [PreparedKey: (sql: String, name: String)] = [:]
    private var preparedCount = 0
    /// `enable_seqscan` is off in this session (see ``useIndexScans(_:)``).
    private var indexScansOnly = false
    /// The transaction statements (BEGIN, COMMIT, …) prepared in this session so far.
    private var fixedPrepared: Set<String> = []
    private var transaction: Transaction?
    private var pending: [Connection.PipelinedStatement] = []
    /// For each pending statement, the change it applies (for the error that names the table), if it must touch one row.
    private var oneRow: [(what: String, table: QualifiedName, commit: LSN)?] = []
    private var pendingBytes = 0
    /// A target transaction is open (its BEGIN queued or sent).
    private var openOnTarget = false
    /// The source transactions done inside it, not yet committed there: their ends and logical messages.
    private var completed: [Applied] = []
    /// Source transactions whose target COMMIT is queued (in ``pending``), not yet sent.
    private var queuedCommits: [Applied] = []
    /// Part of the open target transaction went without its COMMIT (a round trip fell inside a source
    /// transaction): it commits at the next source commit, so a busy stream never keeps it open.
    private var sentWithoutCommit = false
    /// The end of the last transaction that wrote on the target and whose COMMIT returned.
    private(set) var lastAppliedEnd = LSN(0)
    /// The pipeline sent and not yet answered: the target runs it while the next one is decoded.
    private var inFlight: InFlight?
    /// Per table, changes waiting to go many rows to a statement (``Batch``); the tables in the order of their first.
    private var batches: [UInt32: Batch] = [:]
    private var batchOrder: [UInt32] = []
    private var batchedBytes = 0
    /// The open target transaction commits only when ``commitGroup()`` says so: ``RelayScheduler``
    /// decides, so that the sessions commit in the source's order.
    var holdsCommits = false

    private struct InFlight {
        var answer: Task<Void, Error>
        /// Set when the answer is there, so that a flush can tell, without waiting, that the target is free.
        var answered: Mutex<Bool>
        /// Per statement, the change it applies when it must touch one row.
        var changes: [(what: String, table: QualifiedName, commit: LSN)?]
        /// The source transactions its COMMIT commits.
        var commits: [Applied]
    }

    /// Changes of one shape to one table (INSERTs, or UPDATEs that find their row by a key they keep), in
    /// the open target transaction, not yet queued. Each statement costs the target about as much as the
    /// rows it writes, so they go many rows to a statement: queued before any other change to that table
    /// (which so sees them), before a relation is described again or a TRUNCATE, and before the target
    /// COMMIT. Changes to other tables pass them, which only a trigger, a rule or a foreign-key check could
    /// notice (so none waits unless ``batchesChanges``). Rows of one table change in any order only where
    /// its key is its only unique index (``RelayRelation/batches(_:)``); a later UPDATE of a row already in
    /// the batch replaces the earlier one, whose every value it sets again.
    private struct Batch {
        var table: RelayRelation
        var shape: RelayRelation.Shape
        var rows: [[Connection.Parameter?]] = []
        var bytes = 0
        /// UPDATEs: each row's key values, to its place in ``rows``.
        var keys: [[Connection.Parameter?]: Int] = [:]
        /// The source transaction of its first row, for the error that names it.
        var commit: LSN
    }

    /// A source transaction applied on the target: its end, commit time and logical messages.
    private struct Applied {
        var end: LSN
        var commitTime: Int64
        var messages: [(String, LSN)]
    }

    private struct Transaction {
        var finalLSN: LSN
        /// Already applied by an earlier attempt.
        var skipping: Bool
        var messages: [(String, LSN)] = []
    }

    /// At most this many statements, or bytes of them, wait for one round trip: everything is sent before
    /// anything is read, so a pipeline must fit the sockets' buffers.
    static let pipelineStatements = 512
    static let pipelineBytes = 512 * 1024
    /// At most this many source transactions commit as one target transaction. Fewer commits cost the
    /// target less, but a longer transaction costs more for each row it changes again (each update
    /// walks every version the transaction made of that row): with pgbench's 20 branch rows, changed by
    /// every transaction, groups of hundreds cost the target about three times the CPU of groups of 16
    /// (`scripts/bench-relay.sh`, measured before sequential scans were turned off).
    static let groupTransactions = 16
    /// Where changes wait in batches (``batchesChanges``) a row changed by many transactions of a group is
    /// written once, so groups may be longer: on `scripts/bench-relay.sh 20 30`, groups of 64 drained at
    /// 0.80–0.99× of the subscription's rate where groups of 16 drained at 0.72–0.80× (256: 0.98×).
    static let batchedGroupTransactions = 64

    /// How many source transactions a target transaction holds at most (``groupTransactions``,
    /// ``batchedGroupTransactions``).
    static func groupLimit(batchesChanges: Bool) -> Int { batchesChanges ? batchedGroupTransactions : groupTransactions }

    init(
        target: Connection, appliedThrough: LSN, targetTables: [QualifiedName: RelayTargetTable] = [:], batchesChanges: Bool = false,
        onMessage: @escaping @Sendable (String, LSN) -> Void
    ) {
        self.target = target
        self.targetTables = targetTables
        self.batchesChanges = batchesChanges
        self.appliedThrough = appliedThrough
        self.onMessage = onMessage
        lastAppliedEnd = appliedThrough
    }

    /// Inside a source transaction, a target transaction is open, or a pipeline is not answered yet.
    var inTransaction: Bool { transaction != nil || openOnTarget || inFlight != nil }

    /// A pipeline was sent and its answer not yet read.
    var isSending: Bool { inFlight != nil }

    /// A pipeline was sent and its answer is there to read (``collect()`` will not wait).
    var isAnswered: Bool { inFlight?.answered.withLock { $0 } ?? false }

    /// A target transaction is open, or its COMMIT has not returned yet.
    var awaitingCommit: Bool { openOnTarget || !completed.isEmpty || !queuedCommits.isEmpty || inFlight?.commits.isEmpty == false }

    mutating func handle(_ change: PgOutputMessage) async throws {
        switch change {
        case .begin(let finalLSN, _, _):
            transaction = Transaction(finalLSN: finalLSN, skipping: finalLSN < appliedThrough)
        case .commit(_, let endLSN, let commitTime):
            guard let finished = transaction else {
                throw MigrationError(.streamApply, "the replication stream committed a transaction it never began")
            }
            transaction = nil
            if holdsCommits {
                // Part of the group the scheduler commits, also when it held all its changes back for later.
                completed.append(Applied(end: endLSN, commitTime: commitTime, messages: finished.messages))
                if full { try await flush() }
            } else if openOnTarget {
                // Done in the open target transaction; committed with the others at the next round trip.
                completed.append(Applied(end: endLSN, commitTime: commitTime, messages: finished.messages))
                if completed.count >= Self.groupLimit(batchesChanges: batchesChanges) || sentWithoutCommit { closeGroup() }
                if full { try await flush() }
            } else if !finished.messages.isEmpty {
                // Nothing written on the target: its messages are applied once what came before is.
                try await settle()
                for (prefix, lsn) in finished.messages { onMessage(prefix, lsn) }
            }
        case .relation(let relation):
            // Its columns or their types may have changed: statements are prepared again from here.
            queueBatches()
            relations[relation.oid] = RelayRelation(
                relation, target: targetTables[QualifiedName(schema: relation.namespace, name: relation.name)] ?? .init())
            prepared = [:]
        case .origin, .type:
            break
        case .message(_, let transactional, let lsn, let prefix, _):
            if transactional, transaction != nil {
                transaction?.messages.append((prefix, lsn))
            } else {
                try await settle()
                onMessage(prefix, lsn)
            }
        case .insert(_, let oid, let new):
            let table = try relation(oid)
            try await add(try table.insert(new), of: table, oid: oid)
        case .update(_, let oid, let old, let new):
            let table = try relation(oid)
            try await add(try table.update(old: old, new: new), of: table, oid: oid, oneRowOf: "UPDATE")
        case .delete(_, let oid, let old):
            let table = try relation(oid)
            try await add(try table.delete(old: old), of: table, oid: oid, oneRowOf: "DELETE")
        case .truncate(_, _, let restartIdentity, let oids):
            // Exactly the tables the source truncated, never cascading further (as PostgreSQL's apply).
            let names = try oids.map { try relation($0).name.description }
            guard try beginChange() else { return }
            queueBatches()
            queue(.init("TRUNCATE ONLY \(names.joined(separator: ", "))" + (restartIdentity ? " RESTART IDENTITY" : "") + " RESTRICT"))
            if full { try await flush() }
        case .streamStart, .streamStop, .streamCommit, .streamAbort:
            // ``RelayApplier`` keeps streamed transactions until they commit, then hands them over whole.
            throw MigrationError(.streamApply, "a streamed transaction's block reached the apply session itself")
        }
    }

    /// A change the scheduler held back past its source transaction's COMMIT (committing at `commit`): applied
    /// in the open target transaction, which that COMMIT did not end (``holdsCommits``).
    mutating func handle(heldBack change: PgOutputMessage, of commit: LSN) async throws {
        transaction = Transaction(finalLSN: commit, skipping: false)
        defer { transaction = nil }
        try await handle(change)
    }

    private func relation(_ oid: UInt32) throws -> RelayRelation {
        guard let relation = relations[oid] else {
            throw MigrationError(.streamApply, "the replication stream changed relation \(oid) before describing it")
        }
        return relation
    }

    private struct PreparedKey: Hashable {
        var relation: UInt32
        var shape: RelayRelation.Shape
        /// Rows at once (a ``Batch``).
        var rows = 1
    }

    /// Queues one change's statement in its transaction (begun with the first). `oneRowOf`: it must touch
    /// exactly one row; none is an error inside the server (`1 / 0`), which stops the apply, never a skip.
    private mutating func add(_ change: RelayRelation.Change, of table: RelayRelation, oid: UInt32, oneRowOf what: String? = nil)
        async throws
    {
        guard try beginChange() else { return }
        if batchesChanges, change.shape.kind == .insert || table.batches(change.shape) {
            try await batch(change, of: table, oid: oid)
            return
        }
        queueBatch(of: oid)
        if change.shape.kind != .insert { useIndexScans(!change.shape.byWholeRow) }
        let statement = preparedStatement(PreparedKey(relation: oid, shape: change.shape)) {
            what == nil ? table.sql(for: change.shape) : table.oneRowSQL(for: change.shape)
        }
        queue(
            .init(statement.sql, values: change.parameters, prepared: statement.name, prepares: statement.prepares),
            oneRowOf: what.map { ($0, table.name, transaction?.finalLSN ?? LSN(0)) })
        if full { try await flush() }
    }

    /// The statement prepared under `key` in this session, or its text (`sql()`) under a new name, to prepare.
    private mutating func preparedStatement(_ key: PreparedKey, _ sql: () -> String) -> (sql: String, name: String, prepares: Bool) {
        if let known = prepared[key] { return (known.sql, known.name, false) }
        preparedCount += 1
        let statement = (sql: sql(), name: "relay_\(preparedCount)")
        prepared[key] = statement
        return (statement.sql, statement.name, true)
    }

    /// Keeps a change in its table's batch (``Batch``), queued when the batch is full.
    private mutating func batch(_ change: RelayRelation.Change, of table: RelayRelation, oid: UInt32) async throws {
        if let waiting = batches[oid], waiting.shape != change.shape { queueBatch(of: oid) }
        if batches[oid] == nil {
            batches[oid] = Batch(table: table, shape: change.shape, commit: transaction?.finalLSN ?? LSN(0))
            batchOrder.append(oid)
        }
        let bytes = change.parameters.reduce(0) { $0 + ($1?.count ?? 0) }
        batches[oid]?.bytes += bytes
        batchedBytes += bytes
        if change.shape.kind == .update {
            let key = Array(change.parameters.suffix(table.matchedCount(change.shape)))
            if let row = batches[oid]?.keys[key] {
                batches[oid]?.rows[row] = change.parameters
                return
            }
            let row = batches[oid]?.rows.count
            batches[oid]?.keys[key] = row
        }
        batches[oid]?.rows.append(change.parameters)
        if batches[oid]?.rows.count ?? 0 >= table.rowsPerInsert { queueBatch(of: oid) }
        if batchedBytes >= Self.pipelineBytes { queueBatches() }
        if full { try await flush() }
    }

    /// Queues a table's waiting changes: statements of as many rows as it may take, then of halves, so that
    /// a table has only a few statements to prepare.
    private mutating func queueBatch(of oid: UInt32) {
        guard let batch = batches.removeValue(forKey: oid) else { return }
        batchOrder.removeAll { $0 == oid }
        batchedBytes -= batch.bytes
        let updates = batch.shape.kind == .update
        if updates { useIndexScans(true) }
        var start = 0
        while start < batch.rows.count {
            let remaining = batch.rows.count - start
            let rows = min(batch.table.rowsPerInsert, 1 << (Int.bitWidth - 1 - remaining.leadingZeroBitCount))
            let statement = preparedStatement(PreparedKey(relation: oid, shape: batch.shape, rows: rows)) {
                updates ? batch.table.updateSQL(for: batch.shape, rows: rows) : batch.table.sql(for: batch.shape, rows: rows)
            }
            queue(
                .init(
                    statement.sql, values: Array(batch.rows[start..<start + rows].joined()), prepared: statement.name,
                    prepares: statement.prepares,
                    parameterTypes: updates && statement.prepares ? batch.table.updateParameterTypes(for: batch.shape, rows: rows) : []),
                oneRowOf: updates ? ("UPDATE", batch.table.name, batch.commit) : nil)
            start += rows
        }
    }

    /// Queues every table's waiting changes, in the order of their first.
    private mutating func queueBatches() {
        for oid in batchOrder { queueBatch(of: oid) }
    }

    /// Before a change: false when its transaction was applied by an earlier attempt; else the target
    /// transaction is open (BEGIN queued with the first change).
    private mutating func beginChange() throws -> Bool {
        guard let current = transaction else {
            throw MigrationError(.streamApply, "the replication stream sent a change outside a transaction")
        }
        guard !current.skipping else { return false }
        if !openOnTarget {
            openOnTarget = true
            queueFixed("relay_begin", "BEGIN")
        }
        return true
    }

    private mutating func queue(
        _ statement: Connection.PipelinedStatement, oneRowOf: (what: String, table: QualifiedName, commit: LSN)? = nil
    ) {
        pending.append(statement)
        oneRow.append(oneRowOf)
        pendingBytes +=
            (statement.prepared == nil || statement.prepares ? statement.sql.utf8.count : 0)
            + statement.parameters.reduce(0) { $0 + ($1?.count ?? 0) }
    }

    /// Rows found by key are found through its index, as PostgreSQL's apply worker finds them: a generic
    /// plan may choose a sequential scan for a small table, and on a busy one that reads every dead
    /// version of its rows (pgbench's branches: 20 rows, each changed by every other transaction). Rows
    /// found by all their values (identity FULL) keep the sequential scan, which any other scan would be
    /// slower than. Each statement runs, and is planned, under the setting it needs; the setting changes
    /// only where the kind of lookup does.
    private mutating func useIndexScans(_ indexOnly: Bool) {
        guard indexOnly != indexScansOnly else { return }
        indexScansOnly = indexOnly
        queueFixed(indexOnly ? "relay_index_scans" : "relay_any_scans", "SET enable_seqscan = \(indexOnly ? "off" : "on")")
    }

    /// Queues one of the statements every transaction runs, prepared once per session like the changes.
    private mutating func queueFixed(_ name: String, _ sql: String, _ parameters: [String?] = []) {
        let prepares = fixedPrepared.insert(name).inserted
        queue(.init(sql, parameters, prepared: name, prepares: prepares))
    }

    private var full: Bool { pending.count >= Self.pipelineStatements || pendingBytes >= Self.pipelineBytes }

    /// Queues the COMMIT of the source transactions done in the open target transaction (``holdsCommits``);
    /// ``flush()`` sends it.
    mutating func commitGroup() { closeGroup() }

    /// Queues the COMMIT of the open target transaction, once no source transaction is half-way in it:
    /// it commits the source transactions done in it, recording the last one's position in the origin.
    private mutating func closeGroup() {
        guard openOnTarget, transaction == nil, let last = completed.last else { return }
        queueBatches()
        // The origin's position is set last, right before COMMIT, and deferred constraints are checked
        // before it: from PostgreSQL 16 an aborted transaction's record also advances the origin, so a
        // COMMIT that failed after setting it would have that group skipped after a restart.
        queueFixed("relay_immediate", "SET CONSTRAINTS ALL IMMEDIATE")
        queueFixed(
            "relay_origin",
            "SELECT pg_replication_origin_xact_setup($1::pg_lsn, timestamptz '2000-01-01 00:00:00+00' + $2::bigint * interval '1 microsecond')",
            [last.end.description, String(last.commitTime)])
        queueFixed("relay_commit", "COMMIT")
        queuedCommits += completed
        completed = []
        openOnTarget = false
        // The next group fills up again, however the last one went.
        sentWithoutCommit = false
    }

    /// Sends what is queued in one round trip (the source transactions done commit in it, when none is
    /// half-way), once the pipeline before it is answered: at most one is in flight, and a failure stops
    /// everything after it. Returns how many source transactions that earlier answer committed.
    /// `unlessBusy`: while the target still runs the pipeline before, keep what is queued (it grows into a
    /// bigger pipeline: fewer round trips, each of which leaves the target idle for a moment).
    @discardableResult
    mutating func flush(unlessBusy: Bool = false) async throws -> Int {
        if unlessBusy, !full, let sent = inFlight, !sent.answered.withLock({ $0 }) { return 0 }
        if !holdsCommits { closeGroup() }
        guard !pending.isEmpty else { return 0 }
        let committedBefore = try await collect()
        let (target, statements) = (self.target, pending)
        let answered = Mutex(false)
        inFlight = InFlight(
            answer: Task {
                defer { answered.withLock { $0 = true } }
                _ = try await target.runPipeline(statements)
            }, answered: answered, changes: oneRow, commits: queuedCommits)
        pending = []
        oneRow = []
        pendingBytes = 0
        queuedCommits = []
        sentWithoutCommit = openOnTarget
        return committedBefore
    }

    /// Waits for the pipeline in flight, if any: its commits are applied from here (their messages
    /// delivered). Returns how many source transactions it committed.
    @discardableResult
    mutating func collect() async throws -> Int {
        guard let sent = inFlight else { return 0 }
        inFlight = nil
        do {
            try await sent.answer.value
        } catch let failure as Connection.PipelineError {
            if failure.error.sqlState == "22012", let change = sent.changes[failure.index] {
                throw MigrationError(
                    .streamApply,
                    "\(change.what) of a row of \(change.table.shown) found no such row on the target (the source's transaction "
                        + "committing at \(change.commit)): the target no longer matches the source",
                    fix: "find what changed that table on the target besides this migration; nothing from that transaction on was applied")
            }
            throw failure.error
        }
        for commit in sent.commits {
            lastAppliedEnd = commit.end
            for (prefix, lsn) in commit.messages { onMessage(prefix, lsn) }
        }
        return sent.commits.count
    }

    /// Sends what is queued and waits for every answer: all that arrived so far is on the target.
    @discardableResult
    mutating func settle() async throws -> Int {
        let earlier = try await flush()
        return earlier + (try await collect())
    }
}
