import Foundation
import PGDBMigrator

/// Shows events to people (log lines on stderr) or to programs (NDJSON on stdout).
struct EventRenderer: Sendable {
    var json: Bool
    var verbose: Bool

    private static let lock = NSLock()
    /// A live progress line is on the terminal, to be overwritten.
    nonisolated(unsafe) private static var statusShown = false
    private static let terminal = isatty(STDERR_FILENO) == 1

    func render(_ event: MigrationEvent) {
        let event = Flags.render(event)
        if json {
            write(JSONLine.encode(event), to: .standardOutput)
            return
        }
        if event.kind == .partProgress {
            return  // per-part progress is for programs; the overall line names the parts in flight
        }
        if event.kind == .copyProgress {
            // On a terminal, progress is one live line rewritten in place; in a log, a line each time.
            if Self.terminal {
                Self.lock.withLock {
                    FileHandle.standardError.write(Data("\r\u{1B}[K\(event.message)".utf8))
                    Self.statusShown = true
                }
            } else {
                write("\(event.level.rawValue.uppercased()) stage=\(event.stage.rawValue) \(event.message)", to: .standardError)
            }
            return
        }
        var line = "\(event.level.rawValue.uppercased()) stage=\(event.stage.rawValue) \(event.message)"
        var lists: [String] = []
        for key in event.detail.keys.sorted() {
            guard let value = event.detail[key] else { continue }
            if case .list(let items) = value {
                lists += items.map { "    \(key): \($0)" }
            } else if verbose {
                line += " \(key)=\(value)"
            }
        }
        write(([line] + lists).joined(separator: "\n"), to: .standardError)
    }

    /// The verify summary: a table on stderr; with --json, the whole report as one object on stdout.
    func report(_ report: VerifyReport) {
        if json {
            write(JSONLine.encodeReport(report), to: .standardOutput)
            return
        }
        let width = min(60, report.tables.map(\.table.count).max() ?? 10)
        var lines = ["VERIFY " + "table".padding(toLength: width, withPad: " ", startingAt: 0) + "  source rows  target rows  result"]
        for table in report.tables {
            lines.append(
                "VERIFY " + table.table.padding(toLength: width, withPad: " ", startingAt: 0)
                    + String(format: "  %11d  %11d  ", table.sourceRows, table.targetRows) + (table.matches ? "ok" : "DIFFERS"))
        }
        lines += report.problems.map { "VERIFY \($0)" }
        lines.append(
            "VERIFY \(report.matches ? "match" : "MISMATCH"): \(report.tables.count) table(s) compared in \(String(format: "%.1f", report.seconds)) s"
        )
        write(lines.joined(separator: "\n"), to: .standardError)
    }

    /// A line for the operator that is not an event (e.g. acknowledging Ctrl+C).
    func note(_ text: String) {
        write("NOTE \(text)", to: .standardError)
    }

    /// The last word of a failed run: one line on stderr (and an error object with --json).
    func failure(stage: Stage?, code: MigrationError.Code, message: String, fix: String?) {
        let (message, fix) = (Flags.render(message), fix.map(Flags.render))
        if json {
            write(JSONLine.encodeFailure(stage: stage, code: code, message: message, fix: fix), to: .standardOutput)
        }
        write("error: \(message)\(fix.map { " — \($0)" } ?? "")", to: .standardError)
    }

    private func write(_ text: String, to handle: FileHandle) {
        Self.lock.lock()
        defer { Self.lock.unlock() }
        if Self.statusShown && handle.fileDescriptor == STDERR_FILENO {
            handle.write(Data("\r\u{1B}[K".utf8))  // the live line gives way to the next event
            Self.statusShown = false
        }
        handle.write(Data((text + "\n").utf8))
    }
}

enum JSONLine {
    private struct Failure: Encodable {
        var timestamp: Date
        var level = "error"
        var stage: String?
        var code: String
        var message: String
        var fix: String?
    }

    private static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    static func encode(_ event: MigrationEvent) -> String {
        String(decoding: (try? encoder().encode(event)) ?? Data("{}".utf8), as: UTF8.self)
    }

    /// The verify report, shaped like an event (so every line has the same fields) with the report added.
    private struct ReportLine: Encodable {
        var timestamp: Date
        var level: String
        var stage = "Verify"
        var kind = MigrationEvent.Kind.message
        var message: String
        var detail: [String: Int] = [:]
        var report: VerifyReport
    }

    static func encodeReport(_ report: VerifyReport) -> String {
        let line = ReportLine(
            timestamp: Date(), level: report.matches ? "info" : "error",
            message: report.matches ? "verify report: match" : "verify report: mismatch", report: report)
        return String(decoding: (try? encoder().encode(line)) ?? Data("{}".utf8), as: UTF8.self)
    }

    static func encodeFailure(stage: Stage?, code: MigrationError.Code, message: String, fix: String?) -> String {
        let failure = Failure(timestamp: Date(), stage: stage?.rawValue, code: code.rawValue, message: message, fix: fix)
        return String(decoding: (try? encoder().encode(failure)) ?? Data("{}".utf8), as: UTF8.self)
    }
}
