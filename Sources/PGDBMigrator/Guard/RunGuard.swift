/// What must hold before a run may touch anything, checked and held for the
/// run's lifetime: the arguments are valid, the source and target are two
/// databases, and no other run works on the same state directory or writes
/// into the same target database.
struct RunGuard {
    var config: MigrationConfig
    var events: EventEmitter

    /// The locks a run holds until it ends.
    struct Held: Sendable {
        fileprivate var stateDirectory: StateDirectoryLock?
        fileprivate var target: TargetLock?

        func release() async {
            await target?.release()
            stateDirectory?.release()
        }
    }

    func acquire() async throws -> Held {
        try config.validate()
        let source = config.sourceEndpoint
        let target = config.targetEndpoint
        try await SameDatabaseCheck(source: source, target: target).run()
        // Verify only reads; the other modes write into the target or drop what a run left.
        guard config.mode != .verify else { return Held() }
        let directory = try RunStateStore.prepareDirectory(for: config)
        var held = Held(stateDirectory: try StateDirectoryLock.acquire(directory: directory))
        do {
            held.target = try await TargetLock.acquire(target: target)
        } catch {
            await held.release()
            throw error
        }
        return held
    }
}
