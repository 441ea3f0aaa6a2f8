import CLibPQ

/// Many statements in one round trip: libpq's pipeline mode.
extension Connection {
    /// One statement of a pipeline, with `$1…$n` text parameters.
    public struct PipelinedStatement: Sendable {
        public var sql: String
        public var parameters: [String?]
        /// Run as the prepared statement of this name (parsed and planned once per session).
        public var prepared: String?
        /// Prepare it under ``prepared`` first (its first use in this session).
        public var prepares = false

        public init(_ sql: String, _ parameters: [String?] = [], prepared: String? = nil, prepares: Bool = false) {
            self.sql = sql
            self.parameters = parameters
            self.prepared = prepared
            self.prepares = prepares
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
            let count = Int32(statement.parameters.count)
            if statement.prepares, let name = statement.prepared {
                guard PQsendPrepare(conn, name, statement.sql, count, nil) == 1 else {
                    throw PostgresError(kind: .client, message: scrub(lastErrorMessage()))
                }
            }
            let sent = withParameterArray(statement.parameters) { values in
                if let name = statement.prepared { return PQsendQueryPrepared(conn, name, count, values, nil, nil, 0) }
                return PQsendQueryParams(conn, statement.sql, count, nil, values, nil, nil, 0)
            }
            guard sent == 1 else { throw PostgresError(kind: .client, message: scrub(lastErrorMessage())) }
        }
        guard PQpipelineSync(conn) == 1 else { throw PostgresError(kind: .client, message: scrub(lastErrorMessage())) }
        var rows: [Int] = []
        var failure: PipelineError?
        for (index, statement) in statements.enumerated() {
            // A preparation's result, then the statement's; each ends with a null.
            for preparing in statement.prepares && statement.prepared != nil ? [true, false] : [false] {
                while let result = PQgetResult(conn) {
                    defer { PQclear(result) }
                    switch PQresultStatus(result) {
                    case PGRES_TUPLES_OK, PGRES_COMMAND_OK:
                        if !preparing { rows.append(Int(PQntuples(result))) }
                    case PGRES_PIPELINE_ABORTED:
                        break
                    default:
                        if failure == nil { failure = PipelineError(index: index, error: error(from: result)) }
                    }
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
