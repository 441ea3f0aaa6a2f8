import PostgresClient

/// `--force-clean`: before starting, drop a subscription (target) and a
/// slot (source) of the configured names left by an earlier run.
struct ForceClean {
    var config: MigrationConfig
    var events: EventEmitter

    func run() async throws {
        let settings = config.online
        if try await Subscription.remove(for: config) {
            events.warning(.validate, "--force-clean: dropped subscription \(SQL.identifier(settings.subscriptionName)) on the target")
        }
        let source = try await Endpoint(role: .source, connectionString: config.source).connect()
        if try await ReplicationSlot.drop(named: settings.slotName, on: source) {
            events.warning(.validate, "--force-clean: dropped replication slot \(SQL.identifier(settings.slotName)) on the source")
        }
        await source.close()
    }
}
