/// A queue that workers wait on: `next()` suspends until an item arrives or
/// the queue is closed (then, and on cancellation, it returns nil).
actor AsyncQueue<Item: Sendable> {
    private var items: [Item] = []
    private var head = 0
    private var waiters: [CheckedContinuation<Item?, Never>] = []
    private var closed = false

    /// `closed`: these items are all there will be (a work list handed out to workers in order).
    init(_ items: [Item] = [], closed: Bool = false) {
        self.items = items
        self.closed = closed
    }

    func append(_ item: Item) {
        if !waiters.isEmpty {
            waiters.removeFirst().resume(returning: item)
        } else {
            items.append(item)
        }
    }

    /// No more items will come: waiting workers get nil once the queue is empty.
    func close() {
        closed = true
        for waiter in waiters { waiter.resume(returning: nil) }
        waiters = []
    }

    func next() async -> Item? {
        if head < items.count {
            defer { head += 1 }
            return items[head]
        }
        if closed || Task.isCancelled { return nil }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { waiters.append($0) }
        } onCancel: {
            Task { await self.close() }
        }
    }
}
