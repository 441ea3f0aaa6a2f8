import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Runs `pg_dump`, `pg_restore` and friends as child processes.
///
/// Why not `Foundation.Process`: we need each child in a process group of
/// its own (so Ctrl+C in the terminal reaches only us, and we decide what it
/// means), signal dispositions reset to default (the CLI ignores SIGINT to
/// handle it itself, and ignored signals survive `exec`), and the whole group
/// — `pg_dump -j` forks workers — stopped when the run is cancelled.
/// Blocking reads and `waitpid` happen on a dedicated thread, not on the
/// cooperative pool.
struct ChildProcess: Sendable {
    var executable: String
    var arguments: [String]
    /// Added to (and overriding) this process's environment. Where passwords go.
    var environment: [String: String] = [:]

    struct Exit: Sendable {
        /// The exit code, or nil when a signal ended the child.
        var code: Int32?
        var signal: Int32?
        /// Everything the child wrote to stdout and stderr, line by line.
        var output: [String]

        var succeeded: Bool { code == 0 }
    }

    /// Runs to completion; `onLine` sees each output line as it arrives.
    /// Cancelling the task sends SIGTERM to the child's process group, then
    /// SIGKILL five seconds later if it is still there.
    func run(onLine: @escaping @Sendable (String) -> Void = { _ in }) async throws -> Exit {
        try Task.checkCancellation()
        let pid = try spawn()
        let state = SpawnedChild(pid: pid.pid)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Exit, Error>) in
                let thread = Thread {
                    let lines = ChildProcess.readLines(from: pid.outputFD, onLine: onLine)
                    close(pid.outputFD)
                    var status: Int32 = 0
                    while waitpid(pid.pid, &status, 0) == -1 && errno == EINTR {}
                    state.markExited()
                    let signal = status & 0x7f
                    if signal == 0 {
                        continuation.resume(returning: Exit(code: (status >> 8) & 0xff, signal: nil, output: lines))
                    } else {
                        continuation.resume(returning: Exit(code: nil, signal: signal, output: lines))
                    }
                }
                thread.name = "child:\((executable as NSString).lastPathComponent)"
                thread.start()
            }
        } onCancel: {
            state.terminate()
        }
    }

    private func spawn() throws -> (pid: pid_t, outputFD: Int32) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else {
            throw MigrationError(.validate, "cannot create a pipe for \(executable): \(String(cString: strerror(errno)))")
        }
        // Close-on-exec, so children started concurrently do not inherit our end of the pipe.
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE] { sigaddset(&defaults, signal) }
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        var merged = ProcessInfo.processInfo.environment
        for (key, value) in environment { merged[key] = value }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = merged.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        close(fds[1])
        guard result == 0 else {
            close(fds[0])
            throw MigrationError(.validate, "cannot start \(executable): \(String(cString: strerror(result)))")
        }
        return (pid, fds[0])
    }

    private static func readLines(from fd: Int32, onLine: (String) -> Void) -> [String] {
        var lines: [String] = []
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        func emit(_ bytes: ArraySlice<UInt8>) {
            let line = String(decoding: bytes, as: UTF8.self)
            lines.append(line)
            onLine(line)
        }
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            pending.append(contentsOf: buffer[0..<count])
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                emit(pending[0..<newline])
                pending.removeSubrange(0...newline)
            }
        }
        if !pending.isEmpty { emit(pending[...]) }
        return lines
    }
}

/// The running child, shared between the waiting thread and the cancellation handler.
private final class SpawnedChild: @unchecked Sendable {
    private let lock = NSLock()
    private let pid: pid_t
    private var exited = false

    init(pid: pid_t) { self.pid = pid }

    func markExited() {
        lock.lock()
        exited = true
        lock.unlock()
    }

    /// SIGTERM to the whole process group now, SIGKILL in five seconds if it is still running.
    func terminate() {
        signalGroup(SIGTERM)
        DispatchQueue.global().asyncAfter(deadline: .now() + 5) { [self] in signalGroup(SIGKILL) }
    }

    private func signalGroup(_ signal: Int32) {
        lock.lock()
        defer { lock.unlock() }
        if !exited { killpg(pid, signal) }
    }
}
