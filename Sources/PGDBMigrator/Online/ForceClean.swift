import PostgresClient

/// `--force-clean`: before starting, drop a subscription (target) and a
/// slot (source) of the configured names left by an earlier run.
struct ForceClean {
    var config: MigrationConfig
    var events: EventEmitter

    func run() async throws {
        let settings = config.online
        let targetDatabase = config.target.resolvedDatabase ?? "postgres"
        let target = try await Endpoint(role: .target, connectionString: config.target)
            .connect(database: TargetDatabase.maintenanceDatabase(for: targetDatabase))
        let exists = try await target.scalar(
            """
            SELECT 1 FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid WHERE s.subname = $1 AND d.datname = $2
            """, [settings.subscriptionName, targetDatabase]) != nil
        await target.close()
        if exists {
            let inDatabase = try await Endpoint(role: .target, connectionString: config.target).connect()
            try await Subscription(name: settings.subscriptionName, slotName: settings.slotName, publication: settings.publication)
                .drop(on: inDatabase)
            await inDatabase.close()
            events.warning(.validate, "--force-clean: dropped subscription \(SQL.identifier(settings.subscriptionName)) on the target")
        }
        let source = try await Endpoint(role: .source, connectionString: config.source).connect()
        if try await source.scalar("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", [settings.slotName]) != nil {
            try await ReplicationSlot.drop(named: settings.slotName, on: source)
            events.warning(.validate, "--force-clean: dropped replication slot \(SQL.identifier(settings.slotName)) on the source")
        }
        await source.close()
    }
}
