import Foundation

/// Where a run's control socket lives: `control.sock` in its state directory, which is private (0700)
/// like the socket itself (0600). A Unix socket path holds at most 107 bytes, so a deep state directory
/// gets a short one instead, in a private directory of this OS user's under /tmp, named after the state
/// directory: `status`, `cutover` and `abort` find it from the same arguments.
public enum ControlSocket {
    static let maximumPathBytes = 107

    public static func path(forStateDirectory directory: String) -> String {
        let preferred = (directory as NSString).appendingPathComponent("control.sock")
        if preferred.utf8.count <= maximumPathBytes { return preferred }
        // FNV-1a of the state directory: stable across processes (Swift's own hashes are seeded per process).
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in (directory as NSString).standardizingPath.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return shortDirectory + "/" + String(hash, radix: 16) + ".sock"
    }

    static var shortDirectory: String { "/tmp/pg_dbmigrator-\(getuid())" }

    /// Makes sure the socket's directory is private to this OS user (the short directory is created here,
    /// and refused when someone else made it or opened it up).
    static func prepareDirectory(of socketPath: String) throws {
        let directory = (socketPath as NSString).deletingLastPathComponent
        guard directory == shortDirectory else { return }  // the state directory: created 0700 by the run
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw MigrationError(.validate, "cannot create \(directory) for the control socket: \(String(cString: strerror(errno)))")
        }
        var info = stat()
        guard lstat(directory, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR, info.st_uid == getuid(), info.st_mode & 0o077 == 0
        else {
            throw MigrationError(
                .validate,
                "\(directory), where the control socket of a deep state directory goes, is not a private directory of this user's",
                fix: "remove it, or pass a shorter \(Setting.stateDirectory)")
        }
    }
}
