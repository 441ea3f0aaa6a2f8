import PostgresClient

/// Watches the WAL our slot holds on the source, from the moment it exists
/// until cutover, so a slow copy or a stalled apply cannot quietly fill the
/// source's disk: events carry the retained WAL, a warning fires past
/// `--max-retained-wal-mb`, and an invalidated slot is reported as the end of
/// the road it is.
struct SlotGuard {
    var source: ConnectionString
    var slotName: String
    var limit: UInt64?
    var interval: Duration
    var events: EventEmitter

    struct Reading: Sendable {
        var retainedBytes: UInt64
        var walStatus: String
        var safeWALSize: Int64?
    }

    static func read(slot: String, on connection: Connection) async throws -> Reading? {
        guard
            let row = try await connection.query(
                """
                SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint::text,
                       coalesce(wal_status, 'unknown'), safe_wal_size::text
                FROM pg_replication_slots WHERE slot_name = $1
                """, [slot]
            ).rows.first
        else { return nil }
        return Reading(
            retainedBytes: UInt64(row[0] ?? "0") ?? 0, walStatus: row[1] ?? "unknown", safeWALSize: row[2].flatMap { Int64($0) })
    }

    /// The warning threshold: the configured one, else 10% of
    /// `max_slot_wal_keep_size`, else (unlimited) 10 GB.
    static func defaultLimit(on connection: Connection) async throws -> UInt64 {
        let keep = Int64(try await connection.scalar("SELECT setting FROM pg_settings WHERE name = 'max_slot_wal_keep_size'") ?? "-1") ?? -1
        return keep > 0 ? UInt64(keep) * 1024 * 1024 / 10 : 10 * 1024 * 1024 * 1024
    }

    /// Runs until cancelled (nil) or the slot is lost (why). Never throws for a
    /// failed reading: it reports and tries again.
    func watch() async -> String? {
        var warned = false
        var connection: Connection?
        while !Task.isCancelled {
            do {
                let current: Connection
                if let connection {
                    current = connection
                } else {
                    current = try await Endpoint(role: .source, connectionString: source).connect(label: "slot-guard")
                    connection = current
                }
                let threshold: UInt64
                if let limit { threshold = limit } else { threshold = try await Self.defaultLimit(on: current) }
                if let reading = try await Self.read(slot: slotName, on: current) {
                    events.status.update { $0.retainedWALBytes = Int(reading.retainedBytes) }
                    let detail: [String: EventValue] = [
                        "retained_wal_bytes": .int(Int(reading.retainedBytes)), "wal_status": .string(reading.walStatus),
                        "limit_bytes": .int(Int(threshold)),
                    ]
                    if let loss = SlotLoss.describe(slot: slotName, exists: true, walStatus: reading.walStatus) {
                        await connection?.close()
                        return loss
                    }
                    if reading.retainedBytes > threshold && !warned {
                        warned = true
                        events.warning(
                            events.currentPhase,
                            "replication slot \(SQL.identifier(slotName)) holds \(formatBytes(Int(reading.retainedBytes))) of WAL on the source "
                                + "(over \(formatBytes(Int(threshold)))); watch the source's disk, or finish or abort the migration",
                            detail)
                    } else if reading.retainedBytes <= threshold {
                        warned = false
                    }
                }
            } catch {
                await connection?.close()
                connection = nil  // try again with a new connection next time
            }
            try? await Task.sleep(for: interval)
        }
        await connection?.close()
        return nil
    }
}

/// The one way a lost slot is described, wherever it is found (the guard, the
/// lag reading, a resumed run re-attaching).
enum SlotLoss {
    /// Why `slot` can no longer serve the migration, or nil when it can: it is gone, or
    /// the source invalidated it (`wal_status` lost).
    static func describe(slot: String, exists: Bool, walStatus: String?) -> String? {
        if !exists {
            return "the replication slot \(SQL.identifier(slot)) no longer exists on the source: the changes it held are gone"
        }
        if walStatus == "lost" {
            return "the source invalidated replication slot \(SQL.identifier(slot)) because it held more WAL than "
                + "max_slot_wal_keep_size allows: the changes it held are gone, so this migration cannot finish"
        }
        return nil
    }
}
