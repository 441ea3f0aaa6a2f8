import CLibPQ

/// Many statements in one round trip: libpq's pipeline mode.
extension Connection {
    /// One statement of a pipeline, with `$1…$n` text parameters.
    public struct PipelinedStatement: Sendable {
        public var sql: String
        public var parameters: [String?]

        public init(_ sql: String, _ parameters: [String?] = []) {
            self.sql = sql
            self.parameters = parameters
        }
    }

    /// A statement of a pipeline failed: the ones after it were not run.
    public struct PipelineError: Error, Sendable, CustomStringConvertible {
        /// Which statement (0-based).
        public var index: Int
        public var error: PostgresError
        public var description: String { error.description }
    }

    /// Sends every statement, then reads every result: one round trip for all. Returns the
    /// number of rows each one returned. The first that fails ends the pipeline (the server
    /// skips the rest) and is thrown as a ``PipelineError``; an open transaction is then
    /// aborted, as after any failed statement. Keep a pipeline small (hundreds of statements
    /// with small results): everything is sent before anything is read.
    public func runPipeline(_ statements: [PipelinedStatement]) throws -> [Int] {
        let conn = try live()
        guard !statements.isEmpty else { return [] }
        guard PQenterPipelineMode(conn) == 1 else { throw PostgresError(kind: .client, message: scrub(lastErrorMessage())) }
        defer { PQexitPipelineMode(conn) }
        for statement in statements {
            let sent = withParameterArray(statement.parameters) { values in
                PQsendQueryParams(conn, statement.sql, Int32(statement.parameters.count), nil, values, nil, nil, 0)
            }
            guard sent == 1 else { throw PostgresError(kind: .client, message: scrub(lastErrorMessage())) }
        }
        guard PQpipelineSync(conn) == 1 else { throw PostgresError(kind: .client, message: scrub(lastErrorMessage())) }
        var rows: [Int] = []
        var failure: PipelineError?
        for index in statements.indices {
            // Each statement's results, then a null that ends them.
            while let result = PQgetResult(conn) {
                defer { PQclear(result) }
                switch PQresultStatus(result) {
                case PGRES_TUPLES_OK, PGRES_COMMAND_OK:
                    rows.append(Int(PQntuples(result)))
                case PGRES_PIPELINE_ABORTED:
                    break
                default:
                    if failure == nil { failure = PipelineError(index: index, error: error(from: result)) }
                }
            }
        }
        // The sync point's own result.
        while let result = PQgetResult(conn) {
            let status = PQresultStatus(result)
            PQclear(result)
            if status == PGRES_PIPELINE_SYNC { break }
        }
        if let failure { throw failure }
        guard rows.count == statements.count else {
            throw PostgresError(kind: .client, message: "a pipeline of \(statements.count) statement(s) answered \(rows.count)")
        }
        return rows
    }
}
