import Foundation

/// How an operator (or your program) asks a running online migration to cut over.
///
/// Hold on to `migrator.cutoverHandle` and call ``request()`` from a signal
/// handler, an RPC endpoint or a timer. A request made before streaming has
/// started is remembered and honoured once the target is streaming; the CLI
/// instead treats Ctrl+C before streaming as an abort.
public final class CutoverHandle: Sendable {
    private let state = Mutex(false)

    public init() {}

    /// Asks for cutover. Safe to call from any thread, any number of times.
    public func request() { state.withLock { $0 = true } }

    /// Asks for cutover; true when this call was the one that asked.
    func requestOnce() -> Bool {
        state.withLock { requested in
            defer { requested = true }
            return !requested
        }
    }

    public var isRequested: Bool { state.withLock { $0 } }
}
