import Foundation

/// Where the dump lives between `pg_dump` and `pg_restore`: a private (0700)
/// directory, because a dump holds every row of the database.
struct DumpDirectory: Sendable {
    /// The directory we created and will remove.
    var root: String
    /// The `pg_dump -Fd` output inside it (pg_dump wants to create this itself).
    var dumpPath: String { (root as NSString).appendingPathComponent("dump") }
    /// The native copy's custom-format archive (schema and the small data it does not copy itself).
    var archivePath: String { (root as NSString).appendingPathComponent("schema.dump") }
    /// Where a filtered `pg_restore --list` goes.
    var listPath: String { (root as NSString).appendingPathComponent("post-data.list") }

    /// What we write inside a dump directory.
    private static let ownFiles: Set<String> = ["dump", "schema.dump", "post-data.list", "post-data.list.tmp"]

    /// Creates `requested` (which must not exist or be empty), or a fresh one under `$TMPDIR`.
    /// `reclaiming` (a resumed run) first empties a `requested` directory that holds only what
    /// an interrupted run of ours wrote there.
    static func create(at requested: String?, reclaiming: Bool = false) throws -> DumpDirectory {
        let manager = FileManager.default
        if let requested {
            var isDirectory: ObjCBool = false
            if manager.fileExists(atPath: requested, isDirectory: &isDirectory) {
                var contents = (try? manager.contentsOfDirectory(atPath: requested)) ?? []
                if reclaiming && isDirectory.boolValue && Set(contents).isSubset(of: ownFiles) {
                    for file in contents { try? manager.removeItem(atPath: (requested as NSString).appendingPathComponent(file)) }
                    contents = (try? manager.contentsOfDirectory(atPath: requested)) ?? []
                }
                guard isDirectory.boolValue, contents.isEmpty else {
                    throw MigrationError(
                        .dump, "\(Setting.dumpPath) \(requested) already exists and is not an empty directory",
                        fix: "choose a new path, or remove the old dump first")
                }
                chmod(requested, 0o700)
            } else {
                // Foundation would create it with the umask's mode and chmod it after: mkdir makes it 0700 at once.
                let parent = (requested as NSString).deletingLastPathComponent
                do {
                    if !parent.isEmpty { try manager.createDirectory(atPath: parent, withIntermediateDirectories: true) }
                } catch {
                    throw MigrationError(.dump, "cannot create \(Setting.dumpPath) \(requested): \(error.localizedDescription)")
                }
                guard mkdir(requested, 0o700) == 0 else {
                    throw MigrationError(.dump, "cannot create \(Setting.dumpPath) \(requested): \(String(cString: strerror(errno)))")
                }
            }
            return DumpDirectory(root: requested)
        }
        let root = try PrivateDirectory.make(
            prefix: "pg_dbmigrator", stage: .dump,
            fix: "set TMPDIR to a writable directory with room for the dump, or pass \(Setting.dumpPath)")
        return DumpDirectory(root: root)
    }

    /// Bytes the dump takes on disk.
    var size: Int {
        guard let enumerator = FileManager.default.enumerator(atPath: root) else { return 0 }
        var total = 0
        for case let file as String in enumerator {
            let attributes = try? FileManager.default.attributesOfItem(atPath: (root as NSString).appendingPathComponent(file))
            total += (attributes?[.size] as? Int) ?? 0
        }
        return total
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: root)
    }
}
