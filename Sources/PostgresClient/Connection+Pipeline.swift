import CLibPQ
import Foundation

/// Many statements in one round trip: libpq's pipeline mode.
extension Connection {
    /// One statement of a pipeline, with `$1…$n` parameters (nil for NULL).
    public struct PipelinedStatement: Sendable {
        public var sql: String
        public var parameters: [Parameter?]
        /// Run as the prepared statement of this name (parsed and planned once per session).
        public var prepared: String?
        /// Prepare it under ``prepared`` first (its first use in this session).
        public var prepares = false
        /// The parameters' types (OIDs; 0 or none: the server infers it), where the statement does not say.
        public var parameterTypes: [UInt32] = []

        public init(
            _ sql: String, values parameters: [Parameter?], prepared: String? = nil, prepares: Bool = false, parameterTypes: [UInt32] = []
        ) {
            self.sql = sql
            self.parameters = parameters
            self.prepared = prepared
            self.prepares = prepares
            self.parameterTypes = parameterTypes
        }

        public init(_ sql: String, _ parameters: [String?] = [], prepared: String? = nil, prepares: Bool = false) {
            self.init(sql, values: parameters.map { $0.map(Parameter.text) }, prepared: prepared, prepares: prepares)
        }
    }

    /// A parameter's value as the server receives it (a string literal is text).
    public enum Parameter: Sendable, Hashable, ExpressibleByStringLiteral {
        /// Text, which the server parses with the parameter's type.
        case text(String)
        /// The type's binary form (what its `send` function wrote, read by its `receive` function): only for
        /// a type both servers know by the same definition, as between servers of one major version.
        case binary([UInt8])

        public init(stringLiteral text: String) { self = .text(text) }

        /// Its size in bytes.
        public var count: Int {
            switch self {
            case .text(let text): text.utf8.count
            case .binary(let bytes): bytes.count
            }
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
                let types = statement.parameterTypes.map { Oid($0) }
                guard types.withUnsafeBufferPointer({ PQsendPrepare(conn, name, statement.sql, Int32(types.count), $0.baseAddress) }) == 1
                else {
                    throw PostgresError(kind: .client, message: scrub(lastErrorMessage()))
                }
            }
            let sent = withParameters(statement.parameters) { values, lengths, formats in
                if let name = statement.prepared { return PQsendQueryPrepared(conn, name, count, values, lengths, formats, 0) }
                return PQsendQueryParams(conn, statement.sql, count, nil, values, lengths, formats, 0)
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

/// `parameters` as libpq takes them: values, and where any is binary, their lengths and formats (else nil: all text).
private func withParameters<R>(
    _ parameters: [Connection.Parameter?],
    _ body: (UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<Int32>?, UnsafePointer<Int32>?) -> R
) -> R {
    guard parameters.contains(where: { if case .binary? = $0 { true } else { false } }) else {
        return withParameterArray(parameters.map { if case .text(let text)? = $0 { text } else { nil } }) { body($0, nil, nil) }
    }
    let copies: [UnsafeMutablePointer<CChar>?] = parameters.map {
        switch $0 {
        case nil: return nil
        case .text(let text)?: return strdup(text)
        case .binary(let bytes)?:
            let copy = malloc(max(bytes.count, 1))
            bytes.withUnsafeBytes { if let base = $0.baseAddress { copy?.copyMemory(from: base, byteCount: $0.count) } }
            return copy?.assumingMemoryBound(to: CChar.self)
        }
    }
    defer { copies.forEach { free($0) } }
    let lengths: [Int32] = parameters.map { $0.map { Int32($0.count) } ?? 0 }
    let formats: [Int32] = parameters.map { if case .binary? = $0 { 1 } else { 0 } }
    let values = copies.map { UnsafePointer($0) }
    return values.withUnsafeBufferPointer { values in
        lengths.withUnsafeBufferPointer { lengths in
            formats.withUnsafeBufferPointer { formats in body(values.baseAddress, lengths.baseAddress, formats.baseAddress) }
        }
    }
}
