import Dispatch
import Foundation
import PostgresClient

/// SIGINT and SIGTERM, handled by us rather than by the default action.
///
/// Installed at start-up whatever the inherited disposition: a process
/// started in the background by a script inherits SIGINT as *ignored*, and
/// operators' automation still expects `kill -INT` to be heard. Each of the
/// first two signals goes to `onSignal` with its count; a third exits at once
/// (the escape hatch when the graceful path is stuck).
final class SignalHandling: @unchecked Sendable {
    private let onSignal: @Sendable (_ signal: Int32, _ count: Int) -> Void
    private var sources: [DispatchSourceSignal] = []
    private let lock = NSLock()
    private var received: [Int32] = []

    init(onSignal: @escaping @Sendable (_ signal: Int32, _ count: Int) -> Void) {
        self.onSignal = onSignal
    }

    var lastSignal: Int32? {
        lock.lock()
        defer { lock.unlock() }
        return received.last
    }

    func install() {
        for signalNumber in [SIGINT, SIGTERM] {
            signal(signalNumber, SIG_IGN)  // let the dispatch source see it instead of the default action
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler { [self] in handle(signalNumber) }
            source.resume()
            sources.append(source)
        }
    }

    private func handle(_ signalNumber: Int32) {
        lock.lock()
        received.append(signalNumber)
        let count = received.count
        lock.unlock()
        if count <= 2 {
            onSignal(signalNumber, count)
        } else {
            FileHandle.standardError.write(Data("error: third signal; exiting immediately\n".utf8))
            exit(128 + signalNumber)
        }
    }
}

/// Overwrites passwords in this process's own argv, so `ps` and
/// `/proc/PID/cmdline` stop showing them once the arguments are parsed.
/// (Passing the password by environment or passfile avoids even that moment.)
enum ArgumentScrubber {
    static func hide(_ secrets: [String]) {
        for index in 1..<Int(CommandLine.argc) {
            guard let argument = CommandLine.unsafeArgv[index] else { continue }
            let text = String(cString: argument)
            var ranges = ConnectionString.passwordRanges(in: text)
            for secret in secrets where !secret.isEmpty {
                var searchStart = text.startIndex
                while let range = text[searchStart...].range(of: secret) {
                    ranges.append(range)
                    searchStart = range.upperBound
                }
            }
            for range in ranges {
                let offset = text.utf8.distance(from: text.utf8.startIndex, to: range.lowerBound)
                let length = text.utf8.distance(from: range.lowerBound, to: range.upperBound)
                for byte in offset..<(offset + length) { argument[byte] = CChar(UInt8(ascii: "*")) }
            }
        }
    }
}
