import PostgresClient

/// What an online run has created or changed so far, so that an abort can
/// say exactly what it leaves behind and how to resume or clean up.
final class Leftovers: Sendable {
    struct State: Sendable {
        var publicationCreated = false
        var slotCreated = false
        var subscriptionCreated = false
        var frozenDatabase: String?
    }

    private let state = Mutex(State())

    var snapshot: State { state.withLock { $0 } }

    func set<Value>(_ field: WritableKeyPath<State, Value> & Sendable, _ value: Value) {
        state.withLock { $0[keyPath: field] = value }
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
