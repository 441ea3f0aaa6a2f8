import PostgresClient

/// Refuses a run whose source and target are one and the same database,
/// however the two connection strings spell it.
///
/// Host names, addresses, Unix sockets and port aliases cannot be compared
/// reliably, and a server's identity (system identifier, data directory) is
/// shared by clones of one cluster, between which migrating is legitimate.
/// Advisory locks are per database, so the check asks the servers instead: a
/// lock taken through the source connection and held there is refused to the
/// target connection exactly when both reach the same database.
struct SameDatabaseCheck {
    var source: Endpoint
    var target: Endpoint

    /// The first key of every advisory lock this check takes ("pgd1"); the second is random.
    static let lockClass: Int32 = 0x7067_6431

    func run() async throws {
        let sourceSession = try await source.connect(label: "same-database check")
        let same: Result<String?, Error>
        do {
            same = .success(try await reachesSameDatabase(holdingLockOn: sourceSession))
        } catch {
            same = .failure(error)
        }
        await sourceSession.close()  // which also releases its lock
        if let detected = try same.get() {
            throw MigrationError(
                .validate,
                "the source and the target are the same database (\(SQL.identifier(source.databaseName))): "
                    + "\(Setting.source) \(source.connectionString.redacted) and \(Setting.target) \(target.connectionString.redacted) "
                    + "reach one database (\(detected)); nothing was changed",
                fix: "check \(Setting.source) and \(Setting.target) (and PG_DBMIGRATOR_SOURCE / PG_DBMIGRATOR_TARGET): "
                    + "the target must be another database, on this server or another", code: .sameDatabase)
        }
    }

    /// Takes a lock of a random key through the source session and asks for it through a target session.
    /// Returns what showed that both reach one database, or nil when they do not.
    private func reachesSameDatabase(holdingLockOn sourceSession: Connection) async throws -> String? {
        let keys = [String(Self.lockClass), String(Int32.random(in: 1...Int32.max))]
        try await sourceSession.query("SELECT pg_advisory_lock($1::int, $2::int)", keys)
        let targetSession: Connection
        do {
            targetSession = try await target.connect(label: "same-database check")
        } catch {
            // Only a target database that does not exist yet cannot be the source.
            if try await targetDatabaseIsMissing() { return nil }
            throw error
        }
        let granted = try await targetSession.scalar("SELECT pg_try_advisory_lock($1::int, $2::int)", keys) == "t"
        // Advisory locks are not replicated: a physical standby of the other side serves the same
        // database from another server. The cluster's identity and the database's oid tell.
        let sourceInRecovery = try await sourceSession.scalar("SELECT pg_is_in_recovery()") == "t"
        let targetInRecovery = try await targetSession.scalar("SELECT pg_is_in_recovery()") == "t"
        let standby = sourceInRecovery || targetInRecovery
        var sameThroughReplication = false
        if granted && standby {
            let (mine, theirs) = (try await SourceIdentity.read(on: sourceSession), try await SourceIdentity.read(on: targetSession))
            sameThroughReplication = mine == theirs && !mine.hasPrefix("unknown/")
        }
        await targetSession.close()
        if !granted { return "an advisory lock held through the source connection was refused to the target's" }
        if sameThroughReplication {
            return "\(sourceInRecovery ? "the source" : "the target") is a standby of the other: same system identifier and database"
        }
        return nil
    }

    private func targetDatabaseIsMissing() async throws -> Bool {
        let maintenance = try await target.connect(
            label: "same-database check", database: TargetDatabase.maintenanceDatabase(for: target.databaseName))
        let exists = try await maintenance.scalar("SELECT 1 FROM pg_database WHERE datname = $1", [target.databaseName]) != nil
        await maintenance.close()
        return !exists
    }
}
