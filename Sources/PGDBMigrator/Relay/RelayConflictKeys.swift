/// What each change touches, for ``RelayScheduler`` to find the transactions that conflict, as writeset-based
/// parallel replication finds them: a change names the rows it touches by their replica identity values, and
/// the values it writes by every other unique index of the target's table.
///
/// pgoutput sends an UPDATE's or a DELETE's old values for the replica identity only, so where the target has
/// other unique indexes, the unique values such a change frees are unknown. It then holds the table's *frees*
/// key, which a later change writing a unique value of that table waits for (a value freed by one transaction
/// may be taken by another row in the next), while changes that only write unique values, or only free them,
/// do not wait for each other. Under `REPLICA IDENTITY FULL` the old row comes whole: a row is named by all its
/// values (duplicates share a name, so they wait for each other), and the unique values a change frees are
/// named too. Keys are hashed: two that collide only make a change wait needlessly.
struct RelayConflictKeys {
    /// The keys one change touches.
    struct Touched: Equatable, Sendable {
        /// Its rows and the unique values it writes: it waits for an earlier change that holds one, and a later
        /// one waits for it.
        var holds: [Int] = []
        /// Waited for, not held: changes that only await a key never wait for each other.
        var awaits: [Int] = []
        /// Held, not waited for: changes that only mark a key never wait for each other.
        var marks: [Int] = []

        /// What it waits for.
        var checked: [Int] { holds + awaits }
        /// What later changes wait for.
        var owned: [Int] { holds + marks }
    }

    /// How a relation's changes name what they touch.
    enum Keying: Equatable {
        /// By their replica identity values (none: inserts never conflict; identity FULL: every column), and
        /// by the values of the target's other unique indexes (each a list of column positions).
        case byKey(otherUnique: [[Int]])
        /// The whole table is one key: a unique index that is partial, on expressions, deferred, an exclusion
        /// constraint, or on a column the source does not send.
        case wholeTable
    }

    private var relations: [UInt32: (keying: Keying, columns: [PgOutputMessage.Relation.Column], full: Bool)] = [:]

    /// Learns (again) how `relation`'s changes are keyed, from its columns and `target`, the target's table.
    mutating func describe(_ relation: PgOutputMessage.Relation, target: RelayTargetTable?) {
        relations[relation.oid] = (
            Self.keying(of: relation, target: target), relation.columns, relation.replicaIdentity == UInt8(ascii: "f")
        )
    }

    static func keying(of relation: PgOutputMessage.Relation, target: RelayTargetTable?) -> Keying {
        // Under identity FULL every column is flagged as the identity.
        let identity = relation.columns.filter(\.isKey).map(\.name).sorted()
        guard let target else { return .wholeTable }
        var others: [[Int]] = []
        for index in target.uniqueIndexes where index != identity {
            let positions = index?.map { name in relation.columns.firstIndex { $0.name == name } }
            guard let positions, !positions.isEmpty, positions.allSatisfy({ $0 != nil }) else { return .wholeTable }
            others.append(positions.compactMap { $0 })
        }
        return .byKey(otherUnique: others)
    }

    func keying(of oid: UInt32) -> Keying? { relations[oid]?.keying }

    /// What `message` touches; nothing for a message that changes no row, or of a relation not described
    /// (the session reports that one).
    func touched(by message: PgOutputMessage) -> Touched {
        let oid: UInt32
        switch message {
        case .insert(_, let id, _), .update(_, let id, _, _), .delete(_, let id, _): oid = id
        default: return Touched()
        }
        guard let relation = relations[oid] else { return Touched() }
        guard case .byKey(let others) = relation.keying else { return Touched(holds: [Self.tableKey(oid)]) }
        let columns = relation.columns
        let hasIdentity = columns.contains(where: \.isKey)
        func identity(_ values: [PgOutputMessage.TupleValue]) -> [Int] {
            guard hasIdentity else { return [] }
            var hasher = Hasher()
            hasher.combine(oid)
            for (column, value) in zip(columns, values) where column.isKey { hasher.combine(value) }
            return [hasher.finalize()]
        }
        /// The unique values a new row version writes; a value the change left as it was (unchanged TOAST) was
        /// this row's already.
        func written(_ values: [PgOutputMessage.TupleValue]) -> Touched {
            var touched = Touched()
            for (number, positions) in others.enumerated() {
                let key = positions.map { $0 < values.count ? values[$0] : .unchanged }
                guard !key.contains(.unchanged) else { continue }
                var hasher = Hasher()
                hasher.combine(oid)
                hasher.combine(number)
                hasher.combine(key)
                touched.holds.append(hasher.finalize())
            }
            if !others.isEmpty { touched.awaits = [Self.freesKey(oid)] }
            return touched
        }
        if relation.full { return touchedWhole(by: message, oid: oid, identity: identity, written: written) }
        let frees = others.isEmpty ? [] : [Self.freesKey(oid)]
        switch message {
        case .insert(_, _, let new):
            var touched = written(new)
            touched.holds += identity(new)
            return touched
        case .update(_, _, let old, let new):
            var touched = written(new)
            touched.holds += (old.map { identity($0.values) } ?? []) + identity(new)
            touched.marks = frees
            return touched
        case .delete(_, _, let old):
            return Touched(holds: identity(old.values), marks: frees)
        default:
            return Touched()
        }
    }

    /// Under identity FULL: the old row is sent whole, so an UPDATE or a DELETE holds the unique values it frees
    /// (and a new row's unchanged TOASTed values are the old row's). Should a value of the old row be missing,
    /// the change holds the whole table, after every earlier change to it; the others wait only for such a one.
    private func touchedWhole(
        by message: PgOutputMessage, oid: UInt32, identity: ([PgOutputMessage.TupleValue]) -> [Int],
        written: ([PgOutputMessage.TupleValue]) -> Touched
    ) -> Touched {
        func named(_ rows: [PgOutputMessage.TupleValue]...) -> Touched {
            var touched = Touched(awaits: [Self.tableKey(oid)], marks: [Self.touchedKey(oid)])
            for row in rows { touched.holds += identity(row) + written(row).holds }
            return touched
        }
        let whole = Touched(holds: [Self.tableKey(oid)], awaits: [Self.touchedKey(oid)])
        switch message {
        case .insert(_, _, let new):
            return new.contains(.unchanged) ? whole : named(new)
        case .update(_, _, let old?, let new) where !old.values.contains(.unchanged):
            let newRow = zip(new, old.values).map { $0 == .unchanged ? $1 : $0 }
            return new.count == old.values.count ? named(old.values, newRow) : whole
        case .delete(_, _, let old) where !old.values.contains(.unchanged):
            return named(old.values)
        case .update, .delete:
            return whole
        default:
            return Touched()
        }
    }

    /// A key of the table `oid` itself: the whole table (``tableKey``), every change to it that names its rows
    /// (``touchedKey``), or the unique values its UPDATEs and DELETEs may have freed (``freesKey``).
    private static func key(of oid: UInt32, _ what: String) -> Int {
        var hasher = Hasher()
        hasher.combine(oid)
        hasher.combine(what)
        return hasher.finalize()
    }

    private static func tableKey(_ oid: UInt32) -> Int { key(of: oid, "table") }
    private static func touchedKey(_ oid: UInt32) -> Int { key(of: oid, "touched") }
    private static func freesKey(_ oid: UInt32) -> Int { key(of: oid, "frees unique values") }
}
