import PostgresClient

/// Session settings the phases rely on, in one place.
extension Connection {
    /// Server defaults must not end a session that sits idle in a long
    /// transaction on purpose (a snapshot holder, a copy worker between parts)
    /// or runs a COPY or a checksum for hours.
    func keepAliveWhileIdle() async throws {
        var settings = ["statement_timeout", "idle_in_transaction_session_timeout", "lock_timeout"]
        if serverVersion >= 140_000 { settings.append("idle_session_timeout") }
        try await execute(settings.map { "SET \($0) = 0" }.joined(separator: "; "))
    }

    /// Joins `snapshot` in a read-only repeatable-read transaction; `SET row_security = off`
    /// makes a table the role cannot read in full fail instead of copying only the rows it sees.
    func importSnapshot(_ snapshot: String) async throws {
        try await execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT \(SQL.literal(snapshot)); "
                + "SET LOCAL row_security = off; SET LOCAL search_path = ''")
    }

    /// Settings that change how values print and are read back. Every session
    /// that moves rows as text (COPY) or compares them (verify) pins the same
    /// ones, whatever the servers' defaults; `encoding` (the source database's)
    /// also makes the target convert text from it.
    func pinTextFormats(encoding: String? = nil) async throws {
        try await execute(
            """
            SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres';
            SET extra_float_digits = 3; SET bytea_output = 'hex'; SET lc_monetary = 'C'; SET xmloption = 'content'
            """ + (encoding.map { "; SET client_encoding = \(SQL.literal($0))" } ?? ""))
    }

    /// Index builds sort: more memory keeps the sort out of temporary files.
    /// Raises the session's `maintenance_work_mem` to `bytes`, never lowers it.
    func raiseMaintenanceWorkMem(to bytes: Int) async throws {
        guard bytes > 0 else { return }
        try await query(
            """
            SELECT set_config('maintenance_work_mem', CASE WHEN pg_size_bytes(current_setting('maintenance_work_mem')) < $1::bigint
                                                          THEN ($1::bigint / 1024)::text || 'kB'
                                                          ELSE current_setting('maintenance_work_mem') END, false)
            """, [String(bytes)])
    }
}
