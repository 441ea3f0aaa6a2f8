/// What the copy workers have done so far, for the periodic progress event,
/// the line per finished table and the final summary. Shared by the workers.
final class CopyProgress: Sendable {
    let totalBytes: Int
    private let started = ContinuousClock.now
    private let state: Mutex<State>

    private struct State {
        var copiedBytes = 0
        /// Parts being copied → bytes so far.
        var inFlight: [CopyPart: Int] = [:]
        var tables: [CatalogTable: TableState] = [:]
        var finishedTables = 0
    }

    private struct TableState {
        var partsLeft: Int
        var rows = 0
        var bytes = 0
        var firstStart: ContinuousClock.Instant?
    }

    struct Line {
        var message: String
        var detail: [String: EventValue]
    }

    init(parts: [CopyPart]) {
        totalBytes = parts.reduce(0) { $0 + $1.bytes }
        var state = State()
        for part in parts { state.tables[part.table, default: TableState(partsLeft: 0)].partsLeft += 1 }
        self.state = Mutex(state)
    }

    func started(_ part: CopyPart) {
        state.withLock {
            $0.inFlight[part] = 0
            if $0.tables[part.table]?.firstStart == nil { $0.tables[part.table]?.firstStart = .now }
        }
    }

    func advance(_ part: CopyPart, by bytes: Int) {
        state.withLock {
            $0.inFlight[part, default: 0] += bytes
            $0.copiedBytes += bytes
        }
    }

    /// Records a finished part; returns the table's line once its last part is in.
    func finished(_ part: CopyPart, rows: Int, binary: Bool) -> Line? {
        state.withLock { state -> Line? in
            let bytes = state.inFlight.removeValue(forKey: part) ?? 0
            guard var table = state.tables[part.table] else { return nil }
            table.partsLeft -= 1
            table.rows += rows
            table.bytes += bytes
            state.tables[part.table] = table
            guard table.partsLeft == 0 else { return nil }
            state.finishedTables += 1
            let seconds = table.firstStart.map { (ContinuousClock.now - $0).seconds } ?? 0
            let rate = seconds > 0 ? Double(table.bytes) / seconds : 0
            return Line(
                message: "copied \(part.table.name): \(table.rows) rows, \(formatBytes(table.bytes)) in \(formatSeconds(seconds))"
                    + (rate > 0 ? " (\(formatBytes(Int(rate)))/s)" : "") + (part.count > 1 ? " in \(part.count) parts" : "")
                    + (binary ? ", binary" : ""),
                detail: [
                    "table": .string(part.table.name.description), "rows": .int(table.rows), "bytes": .int(table.bytes),
                    "seconds": .double(seconds), "parts": .int(part.count), "format": .string(binary ? "binary" : "text"),
                ])
        }
    }

    /// Overall progress: bytes, rate, ETA and the parts in flight.
    var current: Line {
        state.withLock { state in
            let seconds = (ContinuousClock.now - started).seconds
            let rate = seconds > 0 ? Double(state.copiedBytes) / seconds : 0
            // The estimate comes from on-disk sizes, so COPY's text can run past it.
            let fraction = totalBytes > 0 ? min(Double(state.copiedBytes) / Double(totalBytes), 1) : 1
            let eta = rate > 0 ? max(Double(totalBytes - state.copiedBytes), 0) / rate : 0
            let parts = state.inFlight.sorted { $0.key.label < $1.key.label }
            return Line(
                message:
                    "copy progress: \(formatBytes(state.copiedBytes)) (\(Int(fraction * 100))% of \(formatBytes(totalBytes)) on disk), "
                    + "\(formatBytes(Int(rate)))/s, \(state.finishedTables)/\(state.tables.count) tables done"
                    + (rate > 0 && fraction < 1 ? ", ETA \(formatSeconds(eta))" : "")
                    + (parts.isEmpty
                        ? "" : "; copying " + parts.map { "\($0.key.label) \(formatBytes($0.value))" }.joined(separator: ", ")),
                detail: [
                    "bytes": .int(state.copiedBytes), "total_bytes": .int(totalBytes),
                    "bytes_per_second": .double(rate), "eta_seconds": .double(eta),
                    "tables_done": .int(state.finishedTables), "tables": .int(state.tables.count),
                    "in_flight": .list(parts.map { "\($0.key.label)=\($0.value)" }),
                ])
        }
    }

    var summary: Line {
        let seconds = (ContinuousClock.now - started).seconds
        let (bytes, tables) = state.withLock { ($0.copiedBytes, $0.tables.count) }
        let rate = seconds > 0 ? Double(bytes) / seconds : 0
        return Line(
            message: "copied \(tables) table(s), \(formatBytes(bytes)) in \(formatSeconds(seconds)) (\(formatBytes(Int(rate)))/s)",
            detail: ["tables": .int(tables), "bytes": .int(bytes), "seconds": .double(seconds), "bytes_per_second": .double(rate)])
    }

    /// One line per part being copied, for programs (events of kind `partProgress`;
    /// people see them folded into ``current``).
    var tables: [Line] {
        state.withLock { state in
            state.inFlight.sorted { $0.key.label < $1.key.label }.map { part, bytes in
                Line(
                    message: "copying \(part.label): \(formatBytes(bytes)) of about \(formatBytes(part.bytes)) on disk",
                    detail: [
                        "table": .string(part.table.name.description), "part": .int(part.index + 1),
                        "parts": .int(part.count), "bytes": .int(bytes), "estimated_bytes": .int(part.bytes),
                    ])
            }
        }
    }

    /// Emits ``current`` and ``tables`` at once, then every `interval` until cancelled.
    func report(every interval: Duration, to events: EventEmitter) async {
        repeat {
            let line = current
            events.emit(MigrationEvent(stage: .restore, kind: .copyProgress, message: line.message, detail: line.detail))
            for table in tables {
                events.emit(MigrationEvent(stage: .restore, kind: .partProgress, message: table.message, detail: table.detail))
            }
        } while (try? await Task.sleep(for: interval)) != nil
    }
}
