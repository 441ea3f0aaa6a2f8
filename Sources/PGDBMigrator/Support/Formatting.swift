import Foundation

/// `1.4 MB`, `312 kB`: sizes as operators read them, in PostgreSQL's units (`pg_size_pretty`,
/// and the flags' MB: 1 kB = 1024 bytes), so figures compare with what the server reports.
public func formatBytes(_ bytes: Int) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f ", value) + units[unit]
}

func formatSeconds(_ seconds: Double) -> String {
    seconds < 60 ? String(format: "%.1f s", seconds) : String(format: "%dm%02ds", Int(seconds) / 60, Int(seconds) % 60)
}

extension Duration {
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
