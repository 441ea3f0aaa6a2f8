import Foundation

/// A serial executor that runs every job on one dedicated OS thread.
///
/// libpq calls block: a query waits on a socket until the server answers.
/// Running them on Swift's cooperative pool would starve every other task on
/// a 2-core machine, so each ``Connection`` actor uses one of these as its
/// executor and its blocking calls happen on a thread of its own.
public final class ThreadExecutor: SerialExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var stopping = false
    /// Our thread's id (`pthread_self`), so the runtime can ask whether code runs on it.
    private var threadID: pthread_t?

    public init(name: String) {
        let thread = Thread { [self] in
            condition.lock()
            threadID = pthread_self()
            condition.unlock()
            self.runLoop()
        }
        thread.name = name
        thread.stackSize = 1 << 20
        thread.start()
    }

    private var isOnOurThread: Bool {
        condition.lock()
        defer { condition.unlock() }
        guard let threadID else { return false }
        return pthread_equal(threadID, pthread_self()) != 0
    }

    /// Lets the runtime confirm isolation when it cannot prove it statically
    /// (e.g. a closure formed on the actor and called inside `withTaskCancellationHandler`).
    public func checkIsolated() {
        precondition(isOnOurThread, "expected to be running on the connection's own thread")
    }

    public func isIsolatingCurrentContext() -> Bool? {
        isOnOurThread
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    /// Lets the thread finish the jobs already queued and then exit.
    public func shutdown() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func runLoop() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty {  // stopping, and nothing left to run
                condition.unlock()
                return
            }
            let batch = jobs
            jobs.removeAll(keepingCapacity: true)
            condition.unlock()
            for job in batch { job.runSynchronously(on: asUnownedSerialExecutor()) }
        }
    }
}
