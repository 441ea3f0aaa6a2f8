import Foundation
import PostgresClient

/// Writes to the sample database the way an application would, one
/// transaction after another, until stopped: INSERT, UPDATE and DELETE on
/// several tables, a REPLICA IDENTITY FULL table with duplicate rows, a
/// partitioned table, an UPDATE that leaves a TOASTed column unchanged, an
/// identity column, sequences advancing.
final class WriteWorkload: @unchecked Sendable {
    private let lock = NSLock()
    private var stopRequested = false
    private var task: Task<Int, Never>?
    private(set) var lastError: String?

    private var shouldStop: Bool { lock.withLock { stopRequested } }

    /// Starts writing; returns once the first transaction has committed.
    func start(_ cluster: TestCluster, database: String) async throws {
        let connection = try await cluster.connect(database: database)
        let firstCommit = AsyncStream<Void>.makeStream()
        task = Task {
            var committed = 0
            while !shouldStop {
                do {
                    try await connection.execute(Self.transaction(committed))
                    committed += 1
                    if committed == 1 { firstCommit.continuation.finish() }
                } catch {
                    lock.withLock { lastError = String(describing: error) }
                    break  // e.g. the source was frozen at cutover
                }
            }
            firstCommit.continuation.finish()
            await connection.close()
            return committed
        }
        for await _ in firstCommit.stream {}
    }

    /// Stops after the transaction in flight and returns how many committed.
    @discardableResult
    func stop() async -> Int {
        lock.withLock { stopRequested = true }
        return await task?.value ?? 0
    }

    static func transaction(_ i: Int) -> String {
        let partitionDay = ["2023-06-01", "2024-06-01", "2031-01-01"][i % 3]
        return """
            BEGIN;
            INSERT INTO public.customers (email, name, city, signup_date, tags, prefs)
                VALUES ('writer\(i)@example.com', 'Writer \(i)', 'Zürich', '2024-01-01', ARRAY['w', NULL], '{"n": \(i)}');
            UPDATE sales.orders SET status = 'shipped', notes = 'updated \(i)' WHERE id = \(i % 4000 + 1);
            DELETE FROM sales.orders WHERE id = \(4000 + i);
            INSERT INTO sales.orders (customer_id, total, ordered_at, notes)
                VALUES ((SELECT id FROM public.customers ORDER BY id LIMIT 1 OFFSET \(i % 500)), \(10 + i).25, '2024-05-01 10:00', E'tab\\there');
            INSERT INTO inventory.stock_movements (id, product_id, moved_on, qty, note)
                VALUES (\(100_000 + i), \(i % 200 + 1), '\(partitionDay)', \(1 + i % 5), 'workload');
            UPDATE public.documents SET title = 'title \(i)' WHERE id = (SELECT min(id) FROM public.documents);
            INSERT INTO "Audit Log".events (op, table_name, row_id) VALUES ('dup', 'workload', 7), ('dup', 'workload', 7);
            DELETE FROM "Audit Log".events WHERE ctid = (SELECT ctid FROM "Audit Log".events WHERE op = 'dup' LIMIT 1);
            SELECT nextval('public.invoice_no_seq');
            COMMIT;
            """
    }
}
