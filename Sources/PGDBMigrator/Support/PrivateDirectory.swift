import Foundation

/// A fresh directory only this OS user can enter (0700), under `$TMPDIR`: for
/// what must not be read by others (a dump, a service file holding a secret).
enum PrivateDirectory {
    static func make(prefix: String, stage: Stage = .validate, fix: String = "set TMPDIR to a writable directory") throws -> String {
        let base = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        var template = Array("\(base)/\(prefix).XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else {  // mkdtemp creates it 0700
            throw MigrationError(
                stage, "cannot create a temporary directory in \(base): \(String(cString: strerror(errno)))", fix: fix)
        }
        return String(cString: made)
    }
}
