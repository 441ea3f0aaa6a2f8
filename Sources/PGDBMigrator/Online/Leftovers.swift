import PostgresClient

/// What an online run has created or changed so far, so that an abort can
/// say exactly what it leaves behind and how to resume or clean up.
///
/// Each change is also written to the run state, so that `--resume` after a
/// crash knows what this run made.
final class Leftovers: Sendable {
    typealias State = RunState.OnlineState

    private let state = Mutex(State())
    private let store = Mutex<RunStateStore?>(nil)

    var snapshot: State { state.withLock { $0 } }

    /// The run's id, which marks what it creates.
    var runID: String? { store.withLock { $0?.current.runID } }

    /// Starts from what `store` recorded, and records every change there.
    func record(in store: RunStateStore) {
        self.store.withLock { $0 = store }
        let recorded = store.current.online
        state.withLock { $0 = recorded }
    }

    /// Records the change at once (in order: under the lock). The replication objects are
    /// also found by name on `--resume`, so a state that cannot be written is not fatal here.
    func set<Value>(_ field: WritableKeyPath<State, Value> & Sendable, _ value: Value) {
        let store = self.store.withLock { $0 }
        state.withLock { state in
            state[keyPath: field] = value
            try? store?.update { $0.online = state }
        }
    }

    /// Records the change and throws when it cannot be written: for a change that
    /// only the run state can later prove was ours (a freeze), recorded before it is made.
    func setDurably<Value>(_ field: WritableKeyPath<State, Value> & Sendable, _ value: Value) throws {
        let store = self.store.withLock { $0 }
        try state.withLock { state in
            var changed = state
            changed[keyPath: field] = value
            try store?.update { $0.online = changed }
            state = changed
        }
    }

    /// One line per object left in place, with the command that removes it.
    func describe(_ settings: OnlineSettings) -> [String] {
        let current = snapshot
        var lines: [String] = []
        if current.subscriptionCreated {
            lines.append(
                "subscription \(SQL.identifier(settings.subscriptionName)) on the target (disabled): resume streaming with "
                    + "ALTER SUBSCRIPTION \(SQL.identifier(settings.subscriptionName)) ENABLE; remove with "
                    + "ALTER SUBSCRIPTION \(SQL.identifier(settings.subscriptionName)) SET (slot_name = NONE); "
                    + "DROP SUBSCRIPTION \(SQL.identifier(settings.subscriptionName))")
        }
        if let origin = current.relayOrigin {
            lines.append(
                "replication origins \(SQL.identifier(origin)) and \(SQL.identifier(origin + "/…")) on the target (where relay apply "
                    + "got to): resume streaming with \(Setting.resume); remove with SELECT pg_replication_origin_drop(roname) FROM "
                    + "pg_replication_origin WHERE roname = \(SQL.literal(origin)) OR roname LIKE \(SQL.literal(origin + "/%"))")
        }
        if current.slotCreated {
            lines.append(
                "replication slot \(SQL.identifier(settings.slotName)) on the source (it retains WAL until dropped): "
                    + "remove with SELECT pg_drop_replication_slot(\(SQL.literal(settings.slotName)))")
        }
        if current.publicationCreated {
            lines.append(
                "publication \(SQL.identifier(settings.publication)) on the source: remove with "
                    + "DROP PUBLICATION \(SQL.identifier(settings.publication))")
        }
        return lines
    }
}
