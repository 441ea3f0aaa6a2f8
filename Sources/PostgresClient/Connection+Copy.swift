import CLibPQ

/// COPY in and out, streamed in batches so memory stays bounded and each
/// hop across the actor boundary carries at least `batchBytes` of data.
extension Connection {
    /// Starts `COPY … TO STDOUT`. Read the data with ``readCopyBatch(minimumBytes:)``.
    public func beginCopyOut(_ sql: String) throws {
        let conn = try live()
        let result = try resultOrError { PQexec(conn, sql) }
        defer { PQclear(result) }
        try check(result, expecting: [PGRES_COPY_OUT])
        copyOutEnded = false
    }

    /// The next batch of COPY data (whole rows, at least `minimumBytes` unless
    /// the copy ends first), or nil once the copy has finished successfully.
    public func readCopyBatch(minimumBytes: Int = 64 * 1024) throws -> [UInt8]? {
        let conn = try live()
        if copyOutEnded {
            copyOutEnded = false
            return nil
        }
        var batch: [UInt8] = []
        batch.reserveCapacity(minimumBytes + 8 * 1024)
        while batch.count < minimumBytes {
            var buffer: UnsafeMutablePointer<CChar>?
            let length = PQgetCopyData(conn, &buffer, 0)
            if length > 0, let buffer {
                buffer.withMemoryRebound(to: UInt8.self, capacity: Int(length)) {
                    batch.append(contentsOf: UnsafeBufferPointer(start: $0, count: Int(length)))
                }
                PQfreemem(buffer)
            } else if length == -1 {
                try finishCommand()
                copyOutEnded = !batch.isEmpty
                return batch.isEmpty ? nil : batch
            } else {
                throw PostgresError(kind: .client, message: scrub(lastErrorMessage()))
            }
        }
        return batch
    }

    /// Starts `COPY … FROM STDIN`. Send data with ``writeCopyData(_:)``, then ``endCopyIn()``.
    public func beginCopyIn(_ sql: String) throws {
        let conn = try live()
        let result = try resultOrError { PQexec(conn, sql) }
        defer { PQclear(result) }
        try check(result, expecting: [PGRES_COPY_IN])
    }

    public func writeCopyData(_ data: [UInt8]) throws {
        let conn = try live()
        let sent = data.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { PQputCopyData(conn, $0.baseAddress, Int32($0.count)) }
        }
        if sent != 1 { throw PostgresError(kind: .client, message: scrub(lastErrorMessage())) }
    }

    /// Ends `COPY FROM STDIN`; `failure` aborts it with that message instead.
    /// Returns the number of rows the server stored.
    @discardableResult
    public func endCopyIn(failure: String? = nil) throws -> Int {
        let conn = try live()
        if PQputCopyEnd(conn, failure) != 1 {
            throw PostgresError(kind: .client, message: scrub(lastErrorMessage()))
        }
        return try finishCommand()
    }

    /// Collects the results that end a COPY; throws the server's error if it failed.
    @discardableResult
    func finishCommand() throws -> Int {
        let conn = try live()
        var rows = 0
        var failure: PostgresError?
        while let result = PQgetResult(conn) {
            defer { PQclear(result) }
            if PQresultStatus(result) == PGRES_COMMAND_OK {
                rows = Int(String(cString: PQcmdTuples(result))) ?? 0
            } else if failure == nil {
                failure = error(from: result)
            }
        }
        if let failure { throw failure }
        return rows
    }
}
