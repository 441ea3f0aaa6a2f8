import PostgresClient

/// The online run's two control sessions, one on the source and one on the
/// target, with one owner.
///
/// Everything after the copy — the lag heartbeat, the cutover's barrier wait,
/// the publication check, sequence sync, the teardown — borrows them through
/// ``retrying(_:)`` for one step at a time and never keeps them: when a server
/// restarts or the network drops, the step is reported, retried with backoff
/// on fresh sessions, and only a loss longer than `giveUpAfter` ends the run.
/// A step given to ``retrying(_:)`` must therefore be safe to run again (a
/// read, or changes that look before they act).
actor ControlSessions {
    private var source: Connection
    private var target: Connection
    private let sourceEndpoint: Endpoint
    private let targetEndpoint: Endpoint
    private let events: EventEmitter
    private let giveUpAfter: Duration

    init(source: Connection, target: Connection, config: MigrationConfig, events: EventEmitter, giveUpAfter: Duration = .seconds(300)) {
        self.source = source
        self.target = target
        self.sourceEndpoint = config.sourceEndpoint
        self.targetEndpoint = config.targetEndpoint
        self.events = events
        self.giveUpAfter = giveUpAfter
    }

    /// The sessions as they are now, for a step that must not be repeated. Fetch them again for the next step.
    var current: (source: Connection, target: Connection) { (source, target) }

    /// Runs `step` with the current sessions; after a lost connection, again with fresh ones.
    nonisolated func retrying<T: Sendable>(_ step: (_ source: Connection, _ target: Connection) async throws -> T) async throws -> T {
        var delay = Duration.seconds(1)
        var lostSince: ContinuousClock.Instant?
        while true {
            let sessions = await current
            do {
                let result = try await step(sessions.source, sessions.target)
                if lostSince != nil { events.info(events.currentPhase, "reconnected; carrying on") }
                return result
            } catch let error as PostgresError where Self.isConnectionLoss(error) {
                let since = lostSince ?? .now
                lostSince = since
                if ContinuousClock.now - since > giveUpAfter {
                    throw MigrationError(
                        events.currentPhase, "lost the connection to a server for over \(giveUpAfter): \(error.message)",
                        fix:
                            "nothing was dropped; when the servers are reachable, resume with ALTER SUBSCRIPTION … ENABLE on the target, or clean up",
                        code: .connection, underlying: error
                    )
                }
                events.warning(
                    events.currentPhase, "lost a connection to a server (\(error.message)); reconnecting in \(delay)",
                    ["retry_in_seconds": .double(delay.seconds)])
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(15))
                do {
                    try await reconnect(replacing: sessions)
                } catch is CancellationError {
                    throw CancellationError()
                } catch {
                    events.warning(events.currentPhase, "cannot reconnect yet: \(error)")
                }
            }
        }
    }

    /// Opens fresh sessions and closes the old ones — unless another step already did.
    private func reconnect(replacing old: (source: Connection, target: Connection)) async throws {
        guard old.source === source && old.target === target else { return }
        let freshSource = try await sourceEndpoint.connect(label: "source-control", stage: events.currentPhase)
        let freshTarget: Connection
        do {
            freshTarget = try await targetEndpoint.connect(label: "target-control", stage: events.currentPhase)
        } catch {
            await freshSource.close()
            throw error
        }
        guard old.source === source && old.target === target else {
            // Another step reconnected while these were opening: theirs stay.
            await freshSource.close()
            await freshTarget.close()
            return
        }
        await source.close()
        await target.close()
        (source, target) = (freshSource, freshTarget)
    }

    /// Closes both sessions; the run is done with them.
    func close() async {
        await source.close()
        await target.close()
    }

    /// Connection trouble rather than a statement's fault: libpq errors, SQLSTATE
    /// class 08 (connection exception) and 57P (operator intervention: shutdown, crash, restart).
    static func isConnectionLoss(_ error: PostgresError) -> Bool {
        guard error.kind == .server, let state = error.sqlState else { return true }
        return state.hasPrefix("08") || state.hasPrefix("57P")
    }
}
