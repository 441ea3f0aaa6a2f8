import Foundation

/// Runs the built `pg_dbmigrator` binary the way an operator would.
struct CLI {
    /// `.build/<config>/pg_dbmigrator`, next to the test bundle (or `$PG_DBMIGRATOR_BIN`).
    static func binary(_ name: String = "pg_dbmigrator") throws -> String {
        if name == "pg_dbmigrator", let explicit = ProcessInfo.processInfo.environment["PG_DBMIGRATOR_BIN"] { return explicit }
        var directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = directory.appendingPathComponent(name).path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        throw TestSupportError("\(name) binary not found next to the tests; run `swift build` first or set PG_DBMIGRATOR_BIN")
    }

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String

        /// With `--json`, the `code` of the error object a failed run ends with.
        var failureCode: String? {
            guard let last = stdout.split(separator: "\n").last,
                let object = try? JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any],
                object["level"] as? String == "error"
            else { return nil }
            return object["code"] as? String
        }
    }

    final class Running: @unchecked Sendable {
        private let process: Process
        private let stdoutPipe = Pipe()
        private let stderrPipe = Pipe()
        private let lock = NSLock()
        private var stdoutData = Data()
        private var stderrData = Data()
        private var openPipes = 2
        /// ``exitStatus`` once seen.
        private var seenExit: Int32?

        init(arguments: [String], environment: [String: String], ignoreSIGINT: Bool, program: String) throws {
            process = Process()
            let binary = try CLI.binary(program)
            if ignoreSIGINT {
                // What a script's `cmd &` does: the child starts with SIGINT ignored.
                process.executableURL = URL(fileURLWithPath: "/bin/sh")
                process.arguments = ["-c", "trap '' INT; exec \"$0\" \"$@\"", binary] + arguments
            } else {
                process.executableURL = URL(fileURLWithPath: binary)
                process.arguments = arguments
            }
            var merged = ProcessInfo.processInfo.environment
            merged["PG_DBMIGRATOR_SOURCE"] = nil
            merged["PG_DBMIGRATOR_TARGET"] = nil
            for (key, value) in environment { merged[key] = value }
            process.environment = merged
            process.standardOutput = stdoutPipe
            process.standardError = stderrPipe
            process.standardInput = FileHandle.nullDevice
            try process.run()
            // The child has its own copies of the write ends: without closing ours, EOF never comes.
            try? stdoutPipe.fileHandleForWriting.close()
            try? stderrPipe.fileHandleForWriting.close()
            // One thread per pipe reads until EOF: no data is lost or reordered around exit.
            for (pipe, toStdout) in [(stdoutPipe, true), (stderrPipe, false)] {
                Thread.detachNewThread { [self] in
                    let handle = pipe.fileHandleForReading
                    while case let data = handle.availableData, !data.isEmpty { append(data, toStdout: toStdout) }
                    lock.withLock { openPipes -= 1 }
                }
            }
        }

        private func append(_ data: Data, toStdout: Bool) {
            lock.lock()
            defer { lock.unlock() }
            if toStdout { stdoutData.append(data) } else { stderrData.append(data) }
        }

        func stdoutSoFar() async throws -> String {
            lock.withLock { String(decoding: stdoutData, as: UTF8.self) }
        }

        var stderrSoFar: String {
            lock.lock()
            defer { lock.unlock() }
            return String(decoding: stderrData, as: UTF8.self)
        }

        var pid: Int32 { process.processIdentifier }

        /// How the child ended (its exit code, or the signal that ended it), once it has: as `Process` says, or
        /// as the kernel does for a child that exited and that `Process` has not reaped yet (in CI one stayed
        /// so for two minutes, and its test timed out waiting). Kept once seen: between `Process` reaping the
        /// child and saying it no longer runs, neither can tell (in CI a finished child read as -1 so).
        var exitStatus: Int32? {
            if let seen = lock.withLock({ seenExit }) { return seen }
            guard let status = process.isRunning ? Self.exited(pid) : process.terminationStatus else { return nil }
            lock.withLock { seenExit = status }
            return status
        }

        var isRunning: Bool { exitStatus == nil }

        /// How `pid`, a child of this process, ended, without reaping it (its owner still will); nil while it runs.
        static func exited(_ pid: Int32) -> Int32? {
            var info = siginfo_t()
            guard waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT | WNOHANG) == 0, info._sifields._sigchld.si_pid == pid else {
                return nil
            }
            return info._sifields._sigchld.si_status
        }

        /// Waits until stderr contains `text` (true) or `timeout` passes or the process exits (false).
        func waitForStderr(_ text: String, timeout: Double = 180) async -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                if stderrSoFar.contains(text) { return true }
                if !isRunning { return stderrSoFar.contains(text) }
                try? await Task.sleep(for: .milliseconds(20))
            }
            return false
        }

        func signal(_ number: Int32) { kill(pid, number) }

        func wait(timeout: Double = 300) async throws -> Result {
            let deadline = Date().addingTimeInterval(timeout)
            while isRunning {
                if Date() > deadline {
                    // What the kernel says of it (R, S, D = in uninterruptible I/O, Z = exited but not yet reaped).
                    let state =
                        (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8))
                        .map { $0.split(separator: ")").last?.split(separator: " ").first.map(String.init) ?? "?" } ?? "gone"
                    process.terminate()
                    throw TestSupportError("pg_dbmigrator did not exit within \(timeout)s (process state \(state)); stderr: \(stderrSoFar)")
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            // Let the readers reach EOF; a grandchild left running (after kill -9) may hold the pipes open, so not forever.
            let drained = Date().addingTimeInterval(3)
            while lock.withLock({ openPipes > 0 }) && Date() < drained {
                try await Task.sleep(for: .milliseconds(10))
            }
            let status = exitStatus ?? -1
            return lock.withLock {
                Result(
                    status: status, stdout: String(decoding: stdoutData, as: UTF8.self),
                    stderr: String(decoding: stderrData, as: UTF8.self))
            }
        }
    }

    static func start(
        _ arguments: [String], environment: [String: String] = [:], ignoreSIGINT: Bool = false, program: String = "pg_dbmigrator"
    ) throws -> Running {
        try Running(arguments: arguments, environment: environment, ignoreSIGINT: ignoreSIGINT, program: program)
    }

    static func run(_ arguments: [String], environment: [String: String] = [:]) async throws -> Result {
        try await start(arguments, environment: environment).wait()
    }
}

/// Every process's command line, as `/proc/*/cmdline` shows it to any user on the machine.
func allCommandLines() -> [(pid: Int32, arguments: [String])] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap { entry in
        guard let pid = Int32(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline"), !data.isEmpty else {
            return nil
        }
        let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        return (pid, arguments)
    }
}

/// Watches `/proc` in the background and remembers every command line it sees.
final class CommandLineWatcher: @unchecked Sendable {
    private let lock = NSLock()
    private var seen: Set<String> = []
    private var running = true
    private var thread: Thread?

    func start() {
        let thread = Thread { [self] in
            while isRunning {
                let lines = allCommandLines().map { $0.arguments.joined(separator: " ") }
                lock.lock()
                seen.formUnion(lines)
                lock.unlock()
                usleep(2_000)
            }
        }
        self.thread = thread
        thread.start()
    }

    private var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        return running
    }

    func stop() -> [String] {
        lock.lock()
        running = false
        let result = Array(seen)
        lock.unlock()
        return result
    }
}
