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

    public var isRequested: Bool { state.withLock { $0 } }
}

/// A small lock-protected value (Synchronization.Mutex needs macOS 15; this works everywhere we run).
final class Mutex<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
