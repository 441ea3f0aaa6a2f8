import Foundation
import PostgresClient

/// One run at a time writes into a target database, whatever state directory
/// or host spelling each run was given.
///
/// A session on the target server holds an advisory lock named after the
/// target database for the whole run. It lives in the `postgres` maintenance
/// database, not in the target itself, so that dropping and re-creating the
/// target (`--drop-target-first`) neither ends it nor is blocked by it; its
/// `application_name` carries this process's PID, so a refused run can name
/// the run that holds the lock.
actor TargetLock {
    /// The first key of the lock ("pgd2"); the second is a hash of the target database's name.
    static let lockClass: Int32 = 0x7067_6432

    private var session: Connection?

    private init(session: Connection) { self.session = session }

    static func acquire(target: Endpoint) async throws -> TargetLock {
        let name = target.databaseName
        let application = "pg_dbmigrator pid \(getpid()) (run on \(name))"
        // Advisory locks are per database: every run must take it in the same one, or two runs would not see
        // each other. Without that database the run does not start: a run that cannot show it is alone must not write.
        let session: Connection
        do {
            session = try await target.connect(label: "target lock", database: "postgres", applicationName: application)
        } catch let error as MigrationError {
            throw MigrationError(
                .validate,
                "cannot connect to the target server's postgres database, where a run holds its lock against a second run "
                    + "into the same target: \(error.message)",
                fix: "let the target role connect to the postgres database (GRANT CONNECT ON DATABASE postgres)", code: .connection)
        }
        try await session.keepAliveWhileIdle()
        let keys = [String(lockClass), String(key(for: name))]
        guard try await session.scalar("SELECT pg_try_advisory_lock($1::int, $2::int)", keys) == "t" else {
            let holder = try? await session.query(
                """
                SELECT a.application_name, a.usename, coalesce(host(a.client_addr), 'local socket'), a.backend_start::text
                FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE l.locktype = 'advisory' AND l.classid = $1::int::oid AND l.objid = $2::int::oid AND l.objsubid = 2
                  AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                """, keys
            ).rows.first
            await session.close()
            let who = holder.map { "\($0[0] ?? "?") as \($0[1] ?? "?") from \($0[2] ?? "?"), since \($0[3] ?? "?")" } ?? "another session"
            throw MigrationError(
                .validate,
                "another migration is already running into the target database \(SQL.identifier(name)): \(who)",
                fix: "wait for it to finish, or stop that run; two runs must never write into one database", code: .busy)
        }
        return TargetLock(session: session)
    }

    /// Ends the session, and with it the lock.
    func release() async {
        await session?.close()
        session = nil
    }

    /// A stable, non-negative 31-bit key for a database name (FNV-1a), the same in every run and process.
    static func key(for name: String) -> Int32 {
        var hash: UInt32 = 2_166_136_261
        for byte in name.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return Int32(bitPattern: hash & 0x7fff_ffff)
    }
}
