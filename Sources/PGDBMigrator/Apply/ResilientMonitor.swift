import PostgresClient

/// The lag monitor, reconnecting when a server restarts or the network
/// drops: a lost connection is reported and retried with backoff; only a
/// loss that lasts longer than `giveUpAfter` ends the run.
actor ResilientMonitor {
    private var monitor: LagMonitor
    private let config: MigrationConfig
    private let events: EventEmitter
    private let giveUpAfter: Duration

    init(_ monitor: LagMonitor, config: MigrationConfig, events: EventEmitter, giveUpAfter: Duration = .seconds(300)) {
        self.monitor = monitor
        self.config = config
        self.events = events
        self.giveUpAfter = giveUpAfter
    }

    /// The current connections (new ones after a reconnect).
    var connections: (source: Connection, target: Connection) { (monitor.source, monitor.target) }

    func read() async throws -> LagReading {
        var delay = Duration.seconds(1)
        var lostSince: ContinuousClock.Instant?
        while true {
            do {
                let reading = try await monitor.read()
                if lostSince != nil { events.info(events.currentPhase, "reconnected; watching replication again") }
                return reading
            } catch let error as PostgresError where Self.isConnectionLoss(error) {
                let since = lostSince ?? .now
                lostSince = since
                if ContinuousClock.now - since > giveUpAfter {
                    throw MigrationError(
                        events.currentPhase, "lost the connection to a server for over \(giveUpAfter): \(error.message)",
                        fix: "nothing was dropped; when the servers are reachable, resume with ALTER SUBSCRIPTION … ENABLE on the target, or clean up")
                }
                events.warning(
                    events.currentPhase, "lost a connection while watching replication (\(error.message)); reconnecting in \(delay)",
                    ["retry_in_seconds": .double(delay.seconds)])
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(15))
                if let fresh = try? await reconnect() { monitor = fresh }
            }
        }
    }

    private func reconnect() async throws -> LagMonitor {
        let source = try await Endpoint(role: .source, connectionString: config.source).connect(label: "source-control")
        let target = try await Endpoint(role: .target, connectionString: config.target).connect(label: "target-control")
        await monitor.source.close()
        await monitor.target.close()
        return LagMonitor(source: source, target: target, slotName: monitor.slotName, subscriptionName: monitor.subscriptionName)
    }

    /// Connection trouble rather than a statement's fault: libpq errors, SQLSTATE
    /// class 08 (connection exception) and 57P (operator intervention: shutdown, crash, restart).
    static func isConnectionLoss(_ error: PostgresError) -> Bool {
        guard error.kind == .server, let state = error.sqlState else { return true }
        return state.hasPrefix("08") || state.hasPrefix("57P")
    }
}
