import Foundation
import PostgresClient

/// `--mode cleanup`: finds what an online run left — the subscription on the
/// target, the slot (and the WAL it holds) and our publication on the source,
/// a source database frozen at cutover — and drops or undoes each, saying so.
/// `--dry-run` only lists. A publication without our mark existed before the
/// run and is never dropped.
struct Cleanup {
    var config: MigrationConfig
    var events: EventEmitter
    var settings: OnlineSettings { config.online }

    func run() async throws -> MigrationOutcome {
        let started = ContinuousClock.now
        var found: [String] = []
        let verb = settings.dryRun ? "would drop" : "dropped"

        if try await Subscription.remove(for: config, dryRun: settings.dryRun) {
            found.append("\(verb) subscription \(SQL.identifier(settings.subscriptionName)) on the target")
        }

        let source = try await Endpoint(role: .source, connectionString: config.source).connect()
        // A frozen source database starts our session read-only too; this session must be able to write.
        try await source.execute("SET default_transaction_read_only = off")
        if let slot = try await source.query(
            """
            SELECT wal_status, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)),
                   pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint::text
            FROM pg_replication_slots WHERE slot_name = $1
            """, [settings.slotName]
        ).rows.first {
            if !settings.dryRun { try await ReplicationSlot.drop(named: settings.slotName, on: source) }
            found.append("\(verb) replication slot \(SQL.identifier(settings.slotName)) on the source (holding \(slot[1] ?? "?") of WAL, status \(slot[0] ?? "?"))")
            events.info(.cleanup, "replication slot \(SQL.identifier(settings.slotName)) holds \(slot[1] ?? "?") of WAL",
                        ["retained_wal_bytes": .int(Int(slot[2] ?? "0") ?? 0)])
        }
        let publication = Publication(name: settings.publication, filter: config.filter)
        if try await publication.exists(on: source) {
            if try await publication.isOurs(on: source) {
                if !settings.dryRun { try await publication.drop(on: source) }
                found.append("\(verb) publication \(SQL.identifier(settings.publication)) on the source")
            } else {
                events.info(.cleanup, "kept publication \(SQL.identifier(settings.publication)): it existed before pg_dbmigrator ran")
            }
        }
        let sourceDatabase = Endpoint(role: .source, connectionString: config.source).databaseName
        let frozen = try await source.scalar(
            """
            SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
            WHERE d.datname = $1 AND s.setrole = 0 AND 'default_transaction_read_only=on' = ANY (s.setconfig)
            """, [sourceDatabase]) != nil
        if frozen {
            if !settings.dryRun { try await SourceFreeze(database: sourceDatabase).unfreeze(on: source) }
            found.append("\(settings.dryRun ? "would make" : "made") the source database \(SQL.identifier(sourceDatabase)) writable again")
        }
        await source.close()

        // The recorded progress of the run: with its objects gone, there is nothing left to resume.
        let state = RunStateStore.statePath(for: config)
        if FileManager.default.fileExists(atPath: state) {
            if !settings.dryRun { RunStateStore.discard(for: config) }
            found.append("\(settings.dryRun ? "would remove" : "removed") the recorded progress of the interrupted run (\(state))")
        }

        for line in found { events.info(.cleanup, line) }
        events.info(.complete, found.isEmpty ? "nothing to clean up" : "cleanup \(settings.dryRun ? "dry run " : "")complete",
                    ["objects": .list(found)])
        return MigrationOutcome(mode: .cleanup, cutoverTriggered: false, warnings: [], duration: ContinuousClock.now - started)
    }

    /// The exact command that cleans up after a run of `config`, for abort messages.
    static func command(for config: MigrationConfig) -> String {
        let settings = config.online
        return "pg_dbmigrator --mode cleanup --source \(shellQuote(config.source.redacted)) --target \(shellQuote(config.target.redacted))"
            + " --slot-name \(shellQuote(settings.slotName)) --publication \(shellQuote(settings.publication))"
            + " --subscription-name \(shellQuote(settings.subscriptionName))"
            + (config.stateDirectory.map { " --state-dir \(shellQuote($0))" } ?? "")
    }

    private static func shellQuote(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
