/// How long a cutover started now would hold writes: from the freeze to the target's ready event.
///
/// Three parts. What the target has yet to apply (`lag_seconds`, the walsender's replay lag, or the
/// backlog at the current apply rate, whichever is longer). The target's confirmation of the barrier:
/// its apply worker commits asynchronously and reports only what its WAL writer has flushed, so the
/// slot's position trails by up to the target's `wal_writer_delay`. And the cutover's own statements,
/// each a round trip to a server at the cost just measured by the heartbeat's reading, with a floor
/// for the DDL and commits they are. Unlogged tables and large objects are copied again inside the
/// window, growing with their size: not counted here.
struct DowntimeEstimate {
    /// With `freezeSourceAtCutover`: the freeze's statements are in the window (without it, the
    /// operator stops writes, and the window starts there).
    var freezing: Bool
    var tables: Int
    var sequences: Int
    /// The target's `wal_writer_delay`, in seconds.
    var flushDelay: Double = 0.2

    /// Slowest a DDL statement with its commit is taken to be, whatever a trivial reading costs.
    static let statementFloor = 0.004

    func seconds(lagSeconds: Double?, catchUpSeconds: Double?, roundTrip: Duration) -> Double {
        let backlog = max(lagSeconds ?? 0, catchUpSeconds ?? 0)
        // The reading asked both servers one question each.
        let statement = max(roundTrip.seconds / 2, Self.statementFloor)
        // Barrier, the apply wait's first poll, the publication check, the snapshot and the teardown
        // (subscription disabled, detached and dropped; slot and publication dropped); per table, the
        // freeze's trigger; per sequence, reading on the source and setting on the target.
        var statements = 12 + 2 * sequences
        if freezing { statements += 8 + 2 * tables }
        return backlog + flushDelay + Double(statements) * statement
    }
}
