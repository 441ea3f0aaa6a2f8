import Foundation

/// The PostgreSQL client programs the migration runs, found and version-checked.
struct PostgresTools: Sendable {
    struct Tool: Sendable {
        var name: String
        var path: String
        /// Major version, e.g. 15 (or 9 for 9.x: only the first number matters for our checks).
        var major: Int
        var versionLine: String
    }

    var pgDump: Tool
    var pgRestore: Tool
    var vacuumdb: Tool

    /// Finds the tools in `directory` when given, else on `PATH`, else in `pg_config --bindir`.
    static func locate(in directory: String?) async throws -> PostgresTools {
        func find(_ name: String) async throws -> Tool {
            let candidates: [String]
            if let directory {
                candidates = [(directory as NSString).appendingPathComponent(name)]
            } else {
                let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
                candidates = path.split(separator: ":").map { "\($0)/\(name)" }
            }
            guard let path = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
                let whereLooked = directory.map { "in \($0)" } ?? "on PATH"
                throw MigrationError(
                    .validate, "\(name) not found \(whereLooked)",
                    fix: "install the PostgreSQL client programs (Debian/Ubuntu: apt-get install postgresql-client) "
                        + "or pass \(Setting.pgBinDirectory) with the directory that holds \(name)")
            }
            let exit = try await ChildProcess(executable: path, arguments: ["--version"]).run()
            guard exit.succeeded, let line = exit.output.first, let major = parseMajorVersion(line) else {
                throw MigrationError(
                    .validate, "\(path) --version did not report a PostgreSQL version",
                    fix: "check that \(path) is PostgreSQL's \(name)")
            }
            return Tool(name: name, path: path, major: major, versionLine: line)
        }
        return PostgresTools(
            pgDump: try await find("pg_dump"), pgRestore: try await find("pg_restore"), vacuumdb: try await find("vacuumdb"))
    }

    /// `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` → 15.
    static func parseMajorVersion(_ line: String) -> Int? {
        guard let range = line.range(of: #"\) (\d+)"#, options: .regularExpression) else { return nil }
        return Int(line[range].dropFirst(2))
    }

    /// Fails unless `tool` is at least as new as a server of `serverVersionNumber` (e.g. 150004).
    static func require(_ tool: Tool, atLeast serverVersionNumber: Int, server: String) throws {
        let serverMajor = serverVersionNumber / 10_000
        guard tool.major >= serverMajor else {
            throw MigrationError(
                .validate,
                "\(tool.name) \(tool.major) (\(tool.path)) is older than the \(server) server (PostgreSQL \(serverMajor))",
                fix:
                    "install postgresql-client-\(serverMajor) or newer and pass \(Setting.pgBinDirectory) /usr/lib/postgresql/\(serverMajor)/bin"
            )
        }
    }
}
