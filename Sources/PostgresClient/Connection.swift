import CLibPQ
import Foundation

/// One libpq connection, as an actor whose executor is a thread of its own.
///
/// Every blocking libpq call happens on that thread, never on Swift's
/// cooperative pool. Values crossing the actor boundary are `Sendable`
/// (`QueryResult`, `[UInt8]` batches).
public actor Connection {
    private let executor: ThreadExecutor
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    private var pg: OpaquePointer?
    /// Lets another task cancel a running statement (`PQcancel` is thread-safe).
    private nonisolated let canceller: Canceller
    /// What this connection was opened with; used to scrub its password from messages.
    public nonisolated let connectionString: ConnectionString

    /// Set when a `COPY TO STDOUT` has ended but its last rows are still to be handed out.
    var copyOutEnded = false

    /// The server's version as an integer, e.g. `150004` for 15.4.
    public private(set) var serverVersion: Int = 0

    private init(connectionString: ConnectionString, label: String) {
        self.connectionString = connectionString
        self.executor = ThreadExecutor(name: "pg:\(label)")
        self.canceller = Canceller()
    }

    /// Opens a connection. `label` names the thread (for debuggers and `top -H`).
    ///
    /// `replication: true` opens a walsender connection in database mode
    /// (`replication=database`), which accepts replication commands such as
    /// `CREATE_REPLICATION_SLOT` as well as plain SQL.
    public static func connect(
        _ connectionString: ConnectionString, label: String = "connection", replication: Bool = false
    ) async throws -> Connection {
        var options = connectionString.setting("fallback_application_name", to: "pg_dbmigrator")
        if replication { options = options.setting("replication", to: "database") }
        let connection = Connection(connectionString: connectionString, label: label)
        try await connection.open(options)
        return connection
    }

    private func open(_ options: ConnectionString) throws {
        let conn = withKeywordValueArrays(options.options) { PQconnectdbParams($0, $1, 0) }
        guard let conn, PQstatus(conn) == CONNECTION_OK else {
            let message = conn.map { String(cString: PQerrorMessage($0)) } ?? "out of memory"
            if let conn { PQfinish(conn) }
            executor.shutdown()
            throw PostgresError(kind: .connection, message: scrub(message))
        }
        pg = conn
        serverVersion = Int(PQserverVersion(conn))
        canceller.set(PQgetCancel(conn))
        // Notices (e.g. "table does not exist, skipping") are not errors; keep them off stderr.
        PQsetNoticeProcessor(conn, { _, _ in }, nil)
    }

    private static let alwaysInEffect: Set<String> = ["host", "hostaddr", "port", "dbname", "user", "sslmode"]

    /// The options this connection is using that differ from libpq's compiled-in
    /// defaults, wherever they came from: the connection string, a service file,
    /// the environment (`PGSSLMODE`, `PGPASSWORD`, …), or the password file (the
    /// password actually sent). Where to connect, as whom, and `sslmode` are
    /// always included, default or not: another client's defaults (its own
    /// `PGPORT`, `PGSSLMODE`) must not decide them.
    public func settingsInEffect() -> ConnectionString {
        var result = ConnectionString.empty
        guard let pg, let options = PQconninfo(pg) else { return result }
        defer { PQconninfoFree(options) }
        var cursor = options
        while let keywordPointer = cursor.pointee.keyword {
            defer { cursor += 1 }
            let keyword = String(cString: keywordPointer)
            guard let value = cursor.pointee.val.map({ String(cString: $0) }), !value.isEmpty else { continue }
            let compiled = cursor.pointee.compiled.map { String(cString: $0) }
            if value != compiled || Self.alwaysInEffect.contains(keyword) { result = result.setting(keyword, to: value) }
        }
        if let password = PQpass(pg).map({ String(cString: $0) }), !password.isEmpty {
            result = result.setting("password", to: password)
        }
        return result
    }

    isolated deinit {
        canceller.set(nil)
        if let pg { PQfinish(pg) }
        executor.shutdown()
    }

    /// Closes the connection. Safe to call twice. Its thread stays until the
    /// connection is freed, so a statement sent to a closed connection fails
    /// with "connection is closed" instead of waiting forever for a thread that is gone.
    public func close() {
        canceller.set(nil)
        if let pg { PQfinish(pg) }
        pg = nil
    }

    // MARK: - Statements

    /// Runs one statement with `$1…$n` text parameters and returns its rows as text.
    ///
    /// Cancelling the calling task cancels the statement on the server (`PQcancel`).
    @discardableResult
    public nonisolated func query(_ sql: String, _ parameters: [String?] = []) async throws -> QueryResult {
        try await interruptible { try await $0.runQuery(sql, parameters, cancellable: $1) }
    }

    /// Runs one or more `;`-separated statements with no parameters (simple
    /// query protocol). Also the way to send replication commands.
    @discardableResult
    public nonisolated func execute(_ sql: String) async throws -> QueryResult {
        try await interruptible { try await $0.runSimpleQuery(sql, cancellable: $1) }
    }

    /// The first column of the first row, or nil.
    public nonisolated func scalar(_ sql: String, _ parameters: [String?] = []) async throws -> String? {
        try await query(sql, parameters).rows.first?.first ?? nil
    }

    /// Runs `operation` (which hops onto this connection's thread) so that
    /// cancelling the task cancels the statement on the server; `operation` is
    /// told whether it may be cancelled. A task that is already cancelled when
    /// it starts a statement is cleaning up (undoing a freeze, disabling a
    /// subscription): it runs to completion.
    nonisolated func interruptible<R: Sendable>(_ operation: (Connection, _ cancellable: Bool) async throws -> R) async throws -> R {
        if Task.isCancelled { return try await operation(self, false) }
        return try await withTaskCancellationHandler {
            try await operation(self, true)
        } onCancel: { [canceller] in
            canceller.cancel()
        }
    }

    private func runQuery(_ sql: String, _ parameters: [String?], cancellable: Bool) throws -> QueryResult {
        let result = try run(cancellable: cancellable) { conn in
            withParameterArray(parameters) { values in
                PQsendQueryParams(conn, sql, Int32(parameters.count), nil, values, nil, nil, 0)
            }
        }
        defer { PQclear(result) }
        try check(result, expecting: [PGRES_COMMAND_OK, PGRES_TUPLES_OK])
        return QueryResult(result)
    }

    private func runSimpleQuery(_ sql: String, cancellable: Bool) throws -> QueryResult {
        let result = try run(cancellable: cancellable) { PQsendQuery($0, sql) }
        defer { PQclear(result) }
        try check(result, expecting: [PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY])
        return QueryResult(result)
    }

    /// Sends a statement with `send` and returns its result as `PQexec` would (the first error, else the last
    /// result). The server drops a cancel request that reaches it before the statement does (the session is
    /// idle then), so while a `cancellable` statement of a cancelled task still runs, the cancel is asked for
    /// again every second: a cancel never gets lost in that race.
    private func run(cancellable: Bool, _ send: (OpaquePointer) -> Int32) throws -> OpaquePointer {
        let conn = try live()
        guard send(conn) == 1 else { throw PostgresError(kind: .client, message: scrub(lastErrorMessage())) }
        var kept: OpaquePointer?
        var cancelled: ContinuousClock.Instant?
        while true {
            while PQisBusy(conn) == 1 {
                if cancellable, Task.isCancelled, cancelled.map({ ContinuousClock.now - $0 >= .seconds(1) }) ?? true {
                    canceller.cancel()
                    cancelled = .now
                }
                if try waitForInput(conn, timeout: .seconds(1)), PQconsumeInput(conn) == 0 { break }
            }
            guard let result = PQgetResult(conn) else { break }
            let status = PQresultStatus(result)
            if let earlier = kept, PQresultStatus(earlier) == PGRES_FATAL_ERROR {
                PQclear(result)
            } else {
                if let earlier = kept { PQclear(earlier) }
                kept = result
            }
            if [PGRES_COPY_IN, PGRES_COPY_OUT, PGRES_COPY_BOTH].contains(status) { break }
        }
        guard let kept else { throw PostgresError(kind: .client, message: scrub(lastErrorMessage())) }
        return kept
    }

    // MARK: - Internals shared with the COPY extension

    func live() throws -> OpaquePointer {
        guard let pg else { throw PostgresError(kind: .client, message: "connection is closed") }
        return pg
    }

    /// The result of a libpq call, or libpq's error when it returned none (connection lost, out of memory).
    func resultOrError(_ body: () -> OpaquePointer?) throws -> OpaquePointer {
        guard let result = body() else {
            throw PostgresError(kind: .client, message: scrub(lastErrorMessage()))
        }
        return result
    }

    func lastErrorMessage() -> String {
        guard let pg else { return "connection is closed" }
        return String(cString: PQerrorMessage(pg)).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func check(_ result: OpaquePointer, expecting: [ExecStatusType]) throws {
        let status = PQresultStatus(result)
        if expecting.contains(status) { return }
        throw error(from: result)
    }

    func error(from result: OpaquePointer) -> PostgresError {
        func field(_ code: Character) -> String? {
            PQresultErrorField(result, Int32(code.asciiValue!)).map { scrub(String(cString: $0)) }
        }
        let status = PQresultStatus(result)
        if status == PGRES_FATAL_ERROR || status == PGRES_NONFATAL_ERROR, let message = field("M") {
            return PostgresError(
                kind: .server, message: message, sqlState: field("C"), detail: field("D"), hint: field("H"))
        }
        let message = String(cString: PQresultErrorMessage(result)).trimmingCharacters(in: .whitespacesAndNewlines)
        return PostgresError(
            kind: .client,
            message: scrub(message.isEmpty ? "unexpected result status \(String(cString: PQresStatus(status)))" : message))
    }

    nonisolated func scrub(_ text: String) -> String {
        connectionString.scrub(text).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// Rows of a result, as text (NULL is nil). Sendable, so it can leave the connection's thread.
public struct QueryResult: Sendable {
    public var columns: [String]
    public var rows: [[String?]]

    init(_ result: OpaquePointer) {
        let columnCount = Int(PQnfields(result))
        let rowCount = Int(PQntuples(result))
        columns = (0..<columnCount).map { String(cString: PQfname(result, Int32($0))) }
        rows = (0..<rowCount).map { row in
            (0..<columnCount).map { column in
                PQgetisnull(result, Int32(row), Int32(column)) == 1
                    ? nil : String(cString: PQgetvalue(result, Int32(row), Int32(column)))
            }
        }
    }

}

/// Holds the `PGcancel` object under a lock so any thread may cancel.
final class Canceller: @unchecked Sendable {
    private let lock = NSLock()
    private var handle: OpaquePointer?

    func set(_ newHandle: OpaquePointer?) {
        lock.lock()
        defer { lock.unlock() }
        if let handle { PQfreeCancel(handle) }
        handle = newHandle
    }

    func cancel() {
        lock.lock()
        defer { lock.unlock() }
        guard let handle else { return }
        var buffer = [CChar](repeating: 0, count: 256)
        _ = PQcancel(handle, &buffer, Int32(buffer.count))
    }
}

func withParameterArray<R>(_ parameters: [String?], _ body: (UnsafePointer<UnsafePointer<CChar>?>?) -> R) -> R {
    let copies = parameters.map { $0.map { strdup($0) } ?? nil }
    defer { copies.forEach { free($0) } }
    let constCopies = copies.map { UnsafePointer($0) }
    return constCopies.withUnsafeBufferPointer { body($0.baseAddress) }
}
