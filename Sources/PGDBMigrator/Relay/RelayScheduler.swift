import Foundation
import PostgresClient

/// Decides which target session applies each source transaction, and when it
/// may commit: with several sessions, transactions run on them at once and
/// commit in the source's commit order.
///
/// Transactions are received whole (up to ``bufferedChanges`` changes), then
/// applied in groups of up to ``RelayApplySession/groupTransactions`` on the
/// sessions in turn. A group commits only after the one before it has, so the
/// target always shows a prefix of the source's history and the resume position
/// is one LSN (the highest the sessions' origins hold).
///
/// Conflicts are found by key (``RelayConflictKeys``): each change names the
/// rows it touches and the unique values it writes or frees. A change touching
/// what a group not yet committed (on another session) touches is held back,
/// with every later change to the same, until the groups before have
/// committed; the rest runs at once. The target transaction commits the
/// same changes either way (only changes to different rows change places), and
/// the sessions never wait for each other's rows, so they cannot deadlock.
///
/// A larger transaction, TRUNCATE, a relation described again and a logical
/// message outside a transaction are barriers: everything before commits first,
/// and the large transaction goes through the first session as it arrives (never
/// held in memory). With one session, everything does.
struct RelayScheduler {
    /// The sessions, taking groups in turn; the first also applies barriers.
    private var lanes: [Lane]
    private let appliedThrough: LSN
    /// At most this many source transactions commit as one target transaction.
    private let groupTransactions: Int
    private let onMessage: @Sendable (_ prefix: String, _ lsn: LSN) -> Void

    /// What each change touches, by relation.
    private var conflictKeys = RelayConflictKeys()
    /// Per key (hashed), the last group that changed it.
    private var owners: [Int: Int] = [:]
    /// Keys of committed groups are forgotten when ``owners`` grows past this.
    private var forgetAt = 100_000
    private var committedGroup = 0
    private var lastGroup = 0
    /// The session whose group source transactions are added to, and how many it has.
    private var openLane: Int?
    private var openTransactions = 0
    private var current: Incoming?

    /// A source transaction with more changes than this (or ``bufferedBytes`` of values) is a barrier.
    static let bufferedChanges = 2_000
    static let bufferedBytes = 4 << 20

    private struct Lane {
        var session: RelayApplySession
        /// Its group (numbered from 1), 0 when it has none.
        var group = 0
        /// No more source transactions join the group, and its COMMIT is queued (``committing``) once the
        /// group before it has committed.
        var closed = false
        var committing = false
        /// Changes held back until the group before commits (each with its source transaction's commit
        /// position), and the keys they change.
        var heldBack: [(message: PgOutputMessage, commit: LSN)] = []
        var heldKeys: Set<Int> = []
    }

    private enum Incoming {
        /// Applied by an earlier attempt.
        case skipped
        case buffered(Buffered)
        /// Too large to hold: applied by the first session as it arrives.
        case direct
    }

    private struct Buffered {
        var begin: PgOutputMessage
        var finalLSN: LSN
        var messages: [PgOutputMessage] = []
        var keys: [RelayConflictKeys.Touched] = []
        var bytes = 0
        var changes = 0
    }

    init(
        sessions: [RelayApplySession], appliedThrough: LSN, groupTransactions: Int = RelayApplySession.groupTransactions,
        onMessage: @escaping @Sendable (String, LSN) -> Void
    ) {
        lanes = sessions.map { session in
            var session = session
            session.holdsCommits = sessions.count > 1
            return Lane(session: session)
        }
        self.appliedThrough = appliedThrough
        self.groupTransactions = groupTransactions
        self.onMessage = onMessage
    }

    var parallel: Bool { lanes.count > 1 }

    /// A pipeline was sent and its answer not yet read.
    var isSending: Bool { lanes.contains { $0.session.isSending } }

    /// Inside a source transaction, or a target transaction is open or not yet answered.
    var inTransaction: Bool { current != nil || lanes.contains { $0.session.inTransaction || $0.group != 0 } }

    /// The end of the last source transaction whose target COMMIT returned.
    var lastAppliedEnd: LSN { lanes.map(\.session.lastAppliedEnd).max() ?? appliedThrough }

    mutating func handle(_ message: PgOutputMessage) async throws {
        guard parallel else { return try await lanes[0].session.handle(message) }
        switch message {
        case .begin(let finalLSN, _, _):
            current = finalLSN < appliedThrough ? .skipped : .buffered(Buffered(begin: message, finalLSN: finalLSN))
        case .commit:
            defer { current = nil }
            switch current {
            case .skipped?: break
            case .buffered(let transaction)?: try await dispatch(transaction, commit: message)
            case .direct?:
                try await lanes[0].session.handle(message)
                try await lanes[0].session.settle()
                lanes[0].session.holdsCommits = true
            case nil: throw MigrationError(.streamApply, "the replication stream committed a transaction it never began")
            }
        case .relation(let relation):
            // Its columns may have changed: what is open commits first, then every session learns it.
            if case .direct? = current {} else { try await barrier() }
            for lane in lanes.indices { try await lanes[lane].session.handle(message) }
            conflictKeys.describe(
                relation, target: lanes[0].session.targetTables[QualifiedName(schema: relation.namespace, name: relation.name)])
        case .origin, .type:
            break
        case .message(_, let transactional, let lsn, let prefix, _):
            if transactional, current != nil {
                try await add(message)
            } else {
                try await barrier()
                onMessage(prefix, lsn)
            }
        case .truncate:
            if case .buffered? = current { try await applyDirectly() }
            try await add(message)
        case .insert, .update, .delete:
            try await add(message)
        case .streamStart, .streamStop, .streamCommit, .streamAbort:
            throw MigrationError(.streamApply, "a streamed transaction's block reached the apply scheduler itself")
        }
    }

    /// Sends what arrived on (keeping the target busy) without waiting, and notes what committed.
    mutating func flush(unlessBusy: Bool) async throws {
        guard parallel else { return _ = try await lanes[0].session.flush(unlessBusy: unlessBusy) }
        for lane in lanes.indices where lanes[lane].session.isAnswered { try await lanes[lane].session.collect() }
        if let lane = openLane { try await lanes[lane].session.flush(unlessBusy: true) }
        try await advanceCommits()
    }

    /// Reads every answer that is there (waiting for it with one session).
    mutating func collect() async throws {
        guard parallel else { return _ = try await lanes[0].session.collect() }
        try await flush(unlessBusy: true)
    }

    /// The stream paused: what arrived goes to the target, and the oldest group's COMMIT (or, with one
    /// session, every answer) is awaited. Called while the pause lasts, it commits everything in turn.
    mutating func settle() async throws {
        if !parallel { return _ = try await lanes[0].session.settle() }
        if case .direct? = current { return _ = try await lanes[0].session.settle() }
        try await closeOpenGroup()
        if committedGroup < lastGroup {
            try await waitCommitted(committedGroup + 1)
        } else {
            for lane in lanes.indices where lanes[lane].session.isSending { try await lanes[lane].session.collect() }
        }
    }

    /// A target session with nothing open, to ask things between statements.
    var idleTarget: Connection? { lanes.first { !$0.session.inTransaction }?.session.target }

    // MARK: Receiving

    private mutating func add(_ message: PgOutputMessage) async throws {
        switch current {
        case .skipped?: return
        case .direct?: return try await lanes[0].session.handle(message)
        case .buffered(var transaction)?:
            let keys = conflictKeys.touched(by: message)
            current = nil  // no copy of the buffer while it grows
            transaction.messages.append(message)
            transaction.keys.append(keys)
            transaction.bytes += message.valueBytes
            if message.isChange { transaction.changes += 1 }
            current = .buffered(transaction)
            if transaction.changes > Self.bufferedChanges || transaction.bytes > Self.bufferedBytes { try await applyDirectly() }
        case nil:
            throw MigrationError(.streamApply, "the replication stream sent a change outside a transaction")
        }
    }

    /// The transaction received so far is too large to hold (or truncates): once everything before it
    /// has committed, the first session applies it as it arrives, in its own target transaction.
    private mutating func applyDirectly() async throws {
        guard case .buffered(let transaction)? = current else { return }
        try await barrier()
        current = .direct
        lanes[0].session.holdsCommits = false
        try await lanes[0].session.handle(transaction.begin)
        for message in transaction.messages { try await lanes[0].session.handle(message) }
    }

    // MARK: Applying

    /// Applies a whole received transaction in the open group; a change to a row that an earlier group not yet
    /// committed changes is held back until the groups before have committed, with every later change to its rows.
    private mutating func dispatch(_ transaction: Buffered, commit: PgOutputMessage) async throws {
        guard transaction.changes > 0 else {
            // Nothing written here: its logical messages follow what came before.
            if transaction.messages.isEmpty { return }
            try await barrier()
            for case .message(_, _, let lsn, let prefix, _) in transaction.messages { onMessage(prefix, lsn) }
            return
        }
        let lane = try await openGroup()
        let group = lanes[lane].group
        try await advanceCommits()
        try await lanes[lane].session.handle(transaction.begin)
        for (message, keys) in zip(transaction.messages, transaction.keys) {
            let conflicts = keys.checked.contains { key in
                lanes[lane].heldKeys.contains(key) || owners[key].map { $0 != group && $0 > committedGroup } == true
            }
            if conflicts {
                lanes[lane].heldBack.append((message, transaction.finalLSN))
                lanes[lane].heldKeys.formUnion(keys.owned)
            } else {
                try await lanes[lane].session.handle(message)
            }
            for key in keys.owned { owners[key] = group }
        }
        try await lanes[lane].session.handle(commit)
        if owners.count > forgetAt {
            owners = owners.filter { $0.value > committedGroup }
            forgetAt = max(100_000, owners.count * 2)
        }
        openTransactions += 1
        // What is not held back goes with the next round trip (``flush(unlessBusy:)``, after what arrived together
        // is received), to run while the group before does.
        if openTransactions >= groupTransactions { try await closeOpenGroup() }
    }

    /// The session for the next group, once its last group has committed.
    private mutating func openGroup() async throws -> Int {
        if let lane = openLane { return lane }
        let group = lastGroup + 1
        let lane = (group - 1) % lanes.count
        try await waitCommitted(lanes[lane].group)
        lastGroup = group
        lanes[lane].group = group
        openLane = lane
        openTransactions = 0
        return lane
    }

    /// No more source transactions join the open group; its COMMIT follows the one of the group before it
    /// (``advanceCommits()``), without waiting here.
    private mutating func closeOpenGroup() async throws {
        guard let lane = openLane else { return }
        openLane = nil
        lanes[lane].closed = true
        try await advanceCommits()
    }

    /// The session of the oldest group not yet committed.
    private var headLane: Int? { lanes.firstIndex { $0.group == committedGroup + 1 } }

    /// Moves the groups on without waiting, oldest first: once every group before it has committed, a group's
    /// held-back changes go to the target, and, if it is closed, its COMMIT; a group whose COMMIT returned
    /// makes way for the next.
    private mutating func advanceCommits() async throws {
        while let lane = headLane {
            if lanes[lane].session.isAnswered { try await lanes[lane].session.collect() }
            try await releaseHeldBack(lane)
            guard lanes[lane].closed else { return }
            if !lanes[lane].committing {
                lanes[lane].session.commitGroup()
                lanes[lane].committing = true
            }
            try await lanes[lane].session.flush(unlessBusy: true)
            if lanes[lane].session.isAnswered { try await lanes[lane].session.collect() }
            guard !lanes[lane].session.awaitingCommit else { return }
            committedGroup += 1
            lanes[lane].group = 0
            lanes[lane].closed = false
            lanes[lane].committing = false
        }
    }

    /// The changes a session held back go to the target, and nothing more is held back, once every group
    /// before its own has committed.
    private mutating func releaseHeldBack(_ lane: Int) async throws {
        guard !lanes[lane].heldBack.isEmpty, committedGroup == lanes[lane].group - 1 else { return }
        for (message, commit) in lanes[lane].heldBack { try await lanes[lane].session.handle(heldBack: message, of: commit) }
        lanes[lane].heldBack = []
        lanes[lane].heldKeys = []
    }

    /// Waits until group `group` (and so every one before it) has committed. The oldest group never waits for
    /// another, so waiting for its session's answers always ends.
    private mutating func waitCommitted(_ group: Int) async throws {
        while committedGroup < group {
            guard let lane = headLane else {
                throw MigrationError(.streamApply, "relay apply lost track of group \(committedGroup + 1)")
            }
            if openLane == lane { try await closeOpenGroup() }
            try await advanceCommits()
            if committedGroup < group, lanes[lane].group == committedGroup + 1 {
                try await lanes[lane].session.settle()
                try await advanceCommits()
            }
        }
    }

    /// Everything before commits: the open group closes, and every group's COMMIT returns.
    private mutating func barrier() async throws {
        try await closeOpenGroup()
        try await waitCommitted(lastGroup)
        owners.removeAll(keepingCapacity: true)
    }
}

extension PgOutputMessage {
    /// An insert, update or delete.
    fileprivate var isChange: Bool {
        switch self {
        case .insert, .update, .delete, .truncate: return true
        default: return false
        }
    }

    /// Roughly what its values take in memory.
    fileprivate var valueBytes: Int {
        func size(_ values: [TupleValue]) -> Int {
            values.reduce(16) {
                switch $1 {
                case .text(let bytes), .binary(let bytes): $0 + bytes.count + 16
                case .null, .unchanged: $0 + 16
                }
            }
        }
        switch self {
        case .insert(_, _, let new): return size(new)
        case .update(_, _, let old, let new): return size(new) + (old.map { size($0.values) } ?? 0)
        case .delete(_, _, let old): return size(old.values)
        default: return 64
        }
    }
}
