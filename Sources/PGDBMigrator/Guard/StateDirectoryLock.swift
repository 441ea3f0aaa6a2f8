import Foundation

/// One run per state directory: an exclusive `flock` on `<dir>/lock`, held
/// for the run's lifetime and released by the kernel when the process ends,
/// however it ends. The file holds the PID of the run that has it, so a
/// refused run can name it.
final class StateDirectoryLock: Sendable {
    private let descriptor: Int32

    private init(descriptor: Int32) { self.descriptor = descriptor }

    static func acquire(directory: String) throws -> StateDirectoryLock {
        let path = (directory as NSString).appendingPathComponent("lock")
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw MigrationError(
                .validate, "cannot open \(path): \(String(cString: strerror(errno)))",
                fix: "pass \(Setting.stateDirectory) with a directory you can write to")
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let holder = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            close(descriptor)
            throw MigrationError(
                .validate,
                "another pg_dbmigrator run\(holder.map { $0.isEmpty ? "" : " (PID \($0))" } ?? "") is using the state directory \(directory)",
                fix:
                    "wait for it to finish, or stop it (kill -INT \(holder ?? "<pid>")); two runs must never work on one migration at once",
                code: .busy
            )
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(descriptor, 0)
        _ = pwrite(descriptor, pid, pid.count, 0)
        return StateDirectoryLock(descriptor: descriptor)
    }

    func release() {
        _ = ftruncate(descriptor, 0)
        close(descriptor)
    }
}
