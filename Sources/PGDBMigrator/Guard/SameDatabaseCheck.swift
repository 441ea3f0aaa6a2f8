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
        let same: Result<Bool, Error>
        do {
            same = .success(try await reachesSameDatabase(holdingLockOn: sourceSession))
        } catch {
            same = .failure(error)
        }
        await sourceSession.close()  // which also releases its lock
        guard try !same.get() else {
            throw MigrationError(
                .validate,
                "the source and the target are the same database (\(SQL.identifier(source.databaseName)) on one server): "
                    + "--source \(source.connectionString.redacted) and --target \(target.connectionString.redacted) "
                    + "reach one database (an advisory lock held through the source connection was refused to the target's); "
                    + "nothing was changed",
                fix: "check --source and --target (and PG_DBMIGRATOR_SOURCE / PG_DBMIGRATOR_TARGET): "
                    + "the target must be another database, on this server or another")
        }
    }

    /// Takes a lock of a random key through the source session and asks for it through a target session.
    private func reachesSameDatabase(holdingLockOn sourceSession: Connection) async throws -> Bool {
        let keys = [String(Self.lockClass), String(Int32.random(in: 1...Int32.max))]
        try await sourceSession.query("SELECT pg_advisory_lock($1::int, $2::int)", keys)
        // A target database that cannot be reached yet (it does not exist) cannot be the source;
        // the phases that need it say why it cannot be reached.
        guard let targetSession = try? await target.connect(label: "same-database check") else { return false }
        let granted = try? await targetSession.scalar("SELECT pg_try_advisory_lock($1::int, $2::int)", keys)
        await targetSession.close()
        return granted == "f"
    }
}
