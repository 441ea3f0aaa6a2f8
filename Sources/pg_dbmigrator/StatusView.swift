import Foundation
import PGDBMigrator

/// `pg_dbmigrator status` on a terminal: the phase, the copy's progress bar, a sparkline of the lag
/// over the last minutes and the verdict on cutting over now.
struct StatusView {
    var status: MigrationStatus
    var width: Int

    static func terminalWidth() -> Int {
        var size = winsize()
        guard ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 else { return 80 }
        return Int(size.ws_col)
    }

    func render() -> String {
        var lines = [bold("pg_dbmigrator") + " \(status.mode) · phase \(status.phase) · running \(duration(status.secondsRunning))"]
        let graph = max(10, min(60, width - 40))
        if let copy = status.copy {
            let fraction = copy.totalBytes > 0 ? min(Double(copy.bytes) / Double(copy.totalBytes), 1) : 1
            lines.append(
                label("copy") + bar(fraction, width: graph) + String(format: " %3d%%  ", Int(fraction * 100))
                    + "\(formatBytes(copy.bytes)) of \(formatBytes(copy.totalBytes)), \(copy.tablesDone)/\(copy.tables) tables")
        }
        if let lag = status.lag {
            let values = status.lagHistory.map { $0.seconds ?? Double($0.bytes) }
            let now = lag.seconds.map { String(format: "%.1f s", $0) } ?? "\(formatBytes(lag.bytes))"
            let peak = status.lagHistory.compactMap(\.seconds).max()
            lines.append(
                label("lag") + sparkline(values, width: graph) + "  \(now) now (\(formatBytes(lag.bytes)))"
                    + (peak.map { String(format: ", at most %.1f s", $0) } ?? ""))
            if let rate = lag.applyRateBytesPerSecond { lines.append(label("apply") + "\(formatBytes(Int(rate)))/s") }
        }
        if let held = status.retainedWALBytes { lines.append(label("WAL held") + formatBytes(held) + " on the source") }
        if let result = status.result {
            lines.append(label("ended") + "\(result.outcome): \(result.message)")
        } else if status.cutover.state == "done" {
            lines.append(
                label("cutover") + "done at \(status.cutover.barrierLSN ?? "?")"
                    + (status.cutover.writeDowntimeSeconds.map { String(format: "; writes held %.2f s", $0) } ?? ""))
        } else if status.ready {
            lines.append(
                label("cutover") + color("READY", 32)
                    + (status.writeDowntimeEstimateSeconds.map { String(format: ": writes would be held about %.1f s", $0) } ?? ""))
        } else {
            lines.append(label("cutover") + color("NOT READY", 33) + ": " + status.notReadyReasons.joined(separator: "; "))
        }
        for warning in status.warnings.suffix(3) { lines.append(label("warning") + color(String(warning.prefix(width - 12)), 31)) }
        return lines.joined(separator: "\n")
    }

    private func label(_ text: String) -> String { text.padding(toLength: 10, withPad: " ", startingAt: 0) }
    private func bold(_ text: String) -> String { "\u{1B}[1m\(text)\u{1B}[0m" }
    private func color(_ text: String, _ code: Int) -> String { "\u{1B}[1;\(code)m\(text)\u{1B}[0m" }

    private func bar(_ fraction: Double, width: Int) -> String {
        let filled = Int((fraction * Double(width)).rounded())
        return "[" + String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled) + "]"
    }

    /// The last `width` values (older ones merged pairwise when there are more), scaled to the highest.
    private func sparkline(_ values: [Double], width: Int) -> String {
        let ticks = Array("▁▂▃▄▅▆▇█")
        var points = values
        while points.count > width {
            points = stride(from: 0, to: points.count, by: 2).map { max(points[$0], points[min($0 + 1, points.count - 1)]) }
        }
        guard let top = points.max(), top > 0 else { return String(repeating: ticks[0], count: max(points.count, 1)) }
        return String(points.map { ticks[min(Int($0 / top * Double(ticks.count - 1)), ticks.count - 1)] })
    }

    private func duration(_ seconds: Double) -> String {
        let total = Int(seconds)
        return total >= 3600 ? "\(total / 3600)h \(total % 3600 / 60)m" : total >= 60 ? "\(total / 60)m \(total % 60)s" : "\(total)s"
    }
}
