import Synchronization

/// The online run's relay apply (``RelayApplier``), running beside the heartbeat
/// and the cutover: started after the copy (or on `--resume`), stopped by the
/// cutover before the slot is dropped, or by an abort. A failure of its own —
/// a change that finds no row on the target, a server gone for too long — goes
/// to `failed`, which ends the run with it.
final class RelayRun: Sendable {
    private let task = Mutex<Task<Void, Never>?>(nil)

    func start(_ applier: RelayApplier, failed: @escaping @Sendable (MigrationError) async -> Void) {
        let running = Task {
            do {
                try await applier.run()
            } catch is CancellationError {
            } catch let error as MigrationError {
                await failed(error)
            } catch {
                await failed(
                    MigrationError(
                        .streamApply, "relay apply failed: \(error)",
                        fix: "nothing was dropped; fix the cause on the target, then run again with \(Setting.resume)"))
            }
        }
        task.withLock { $0 = running }
    }

    /// Stops the apply, if it runs, and waits until its sessions are closed (the slot is free again).
    func stop() async {
        let running = task.withLock { task -> Task<Void, Never>? in
            defer { task = nil }
            return task
        }
        running?.cancel()
        await running?.value
    }
}
