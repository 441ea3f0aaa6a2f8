import Foundation

/// `--force-clean`: before a fresh start, remove what the interrupted run
/// recorded in the state directory created — its subscription, slot and
/// publication, a freeze it made — exactly as `--mode cleanup` does, and its
/// recorded progress. Objects of the same names that run did not create are
/// left alone; Validate then refuses to reuse them, naming them.
struct ForceClean {
    var config: MigrationConfig
    var events: EventEmitter

    func run() async throws {
        guard let recorded = try RunStateStore.recorded(for: config) else { return }
        let removed = try await Cleanup(config: config, events: events).removeLeftovers(of: recorded, dryRun: false)
        for line in removed { events.warning(.validate, "\(Setting.forceClean): \(line)") }
        RunStateStore.discard(for: config)
    }
}
