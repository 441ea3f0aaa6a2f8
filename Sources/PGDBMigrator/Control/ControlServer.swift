import FlyingFox
import FlyingSocks
import Foundation
import Prometheus
import Synchronization

/// Serves a running migration's ``MigrationControl``: on the control socket in its state directory
/// always (what `pg_dbmigrator status | cutover | abort` talk to), and over TCP with `listen`.
///
/// Both speak the same small HTTP API:
/// - `GET /status`: ``MigrationStatus`` as JSON.
/// - `GET /ready`: 200 when a cutover could start now, else 503 with the reasons.
/// - `POST /cutover`: asks for cutover (idempotent) and answers once the run has ended, with its
///   ``MigrationResult`` (200 when it succeeded); `?wait=false` answers 202 at once. 409 before streaming.
/// - `POST /abort`: stops the run, as a second Ctrl+C; the same `wait`.
/// - `GET /metrics`: the status in Prometheus' text format.
struct ControlServer {
    private var servers: [(server: HTTPServer, task: Task<Void, Never>)] = []
    private var socketPath: String?
    private let requests = Requests()

    /// Starts the control socket and, with `listen`, the HTTP listener. The socket is created
    /// owner-only; a socket left by a killed run is replaced (the run holds the state directory's lock).
    static func start(control: MigrationControl, config: MigrationConfig, events: EventEmitter) async throws -> ControlServer {
        var started = ControlServer()
        let routes = Routes(control: control, token: nil, requests: started.requests)
        let directory = RunStateStore.directory(for: config)
        let path = ControlSocket.path(forStateDirectory: directory)
        do {
            try ControlSocket.prepareDirectory(of: path)
            unlink(path)
            try await started.serve(routes, at: .unix(path: path))
            guard chmod(path, 0o600) == 0 else { throw MigrationError(.validate, "cannot make \(path) private") }
            started.socketPath = path
            events.info(
                .validate, "control socket \(path): pg_dbmigrator status, cutover or abort with \(Setting.stateDirectory) \(directory)",
                ["control_socket": .string(path)])
        } catch {
            // The migration does not need it: said, and the run goes on (signals still work).
            events.warning(.validate, "no control socket (\(error)); status, cutover and abort work by signal only")
        }
        if config.listen != nil {
            let address = try ListenAddress(config: config)
            let server = try await started.serve(
                Routes(control: control, token: address.token, requests: started.requests), at: address.socketAddress())
            let port = await Self.port(of: server) ?? Int(address.port)
            let shown = address.isIPv6 ? "[\(address.host)]:\(port)" : "\(address.host):\(port)"
            events.info(
                .validate,
                "serving /status, /ready, /cutover and /metrics on http://\(shown)" + (address.token == nil ? "" : " (token required)"),
                ["listen": .string(shown), "listen_port": .int(port)])
        }
        return started
    }

    @discardableResult
    private mutating func serve(_ routes: Routes, at address: some SocketAddress) async throws -> HTTPServer {
        // A cutover request waits for the run's end: no time limit on a handler.
        let server = HTTPServer(address: address, timeout: 7 * 24 * 3600, logger: .disabled, handler: routes)
        let task = Task<Void, Never> { try? await server.run() }
        do {
            try await server.waitUntilListening(timeout: 10)
        } catch {
            task.cancel()
            throw MigrationError(.validate, "cannot listen on \(address): \(error)", code: .invalidArgument)
        }
        servers.append((server, task))
        return server
    }

    private static func port(of server: HTTPServer) async -> Int? {
        switch await server.listeningAddress {
        case .ip4(_, let port), .ip6(_, let port): Int(port)
        default: nil
        }
    }

    /// Stops listening once requests waiting for the run's result have had it. FlyingFox's accept loop does
    /// not notice its socket closing (on Linux), so its task is cancelled: after every request has been
    /// answered, with a moment for the last answer to be written, at most 2 s after the run ended. Every run
    /// used to wait out those 2 s.
    func stop() async {
        let deadline = ContinuousClock.now + .seconds(2)
        while let wait = requests.untilQuiet(), ContinuousClock.now < deadline { try? await Task.sleep(for: wait) }
        for (server, task) in servers {
            await server.stop(timeout: 0)
            task.cancel()
        }
        if let socketPath { unlink(socketPath) }
    }
}

/// The control API's requests in flight, and when the last one was answered.
private final class Requests: Sendable {
    private let state = Mutex<(inFlight: Int, lastAnswered: ContinuousClock.Instant?)>((0, nil))
    /// Time an answer is given to be written before its connection may be cancelled.
    static let writing: Duration = .milliseconds(500)

    func started() { state.withLock { $0.inFlight += 1 } }
    func answered() {
        state.withLock {
            $0.inFlight -= 1
            $0.lastAnswered = .now
        }
    }
    /// How long to wait before a stop cuts no answer short; nil: now.
    func untilQuiet() -> Duration? {
        state.withLock { state in
            if state.inFlight > 0 { return .milliseconds(10) }
            guard let last = state.lastAnswered, ContinuousClock.now - last < Self.writing else { return nil }
            return Self.writing - (ContinuousClock.now - last)
        }
    }
}

/// The HTTP API over a ``MigrationControl``.
private struct Routes: HTTPHandler {
    var control: MigrationControl
    var token: String?
    var requests: Requests
    private let metrics = Metrics()

    func handleRequest(_ request: HTTPRequest) async throws -> HTTPResponse {
        requests.started()
        defer { requests.answered() }
        if let token, !Self.bears(request, token) {
            return Self.json(.unauthorized, ["error": "missing or wrong token: send Authorization: Bearer <token from the token file>"])
        }
        let wait = request.query.first { $0.name == "wait" }.map { !["0", "false", "no"].contains($0.value) } ?? true
        switch (request.method, request.path) {
        case (.GET, "/status"):
            return Self.json(.ok, control.status)
        case (.GET, "/ready"):
            let status = control.status
            return Self.json(
                status.ready ? .ok : .serviceUnavailable,
                ReadyAnswer(
                    ready: status.ready, reasons: status.notReadyReasons, writeDowntimeEstimateSeconds: status.writeDowntimeEstimateSeconds)
            )
        case (.POST, "/cutover"):
            switch control.requestCutover() {
            case .refused(let why):
                return Self.json(.conflict, ["error": "cutover refused: \(why)"])
            case .ended(let result):
                return Self.answer(result)
            case .accepted, .alreadyRequested:
                guard wait else { return Self.json(.accepted, ["cutover": "requested"]) }
                return Self.answer(await control.result())
            }
        case (.POST, "/abort"):
            control.abort()
            guard wait else { return Self.json(.accepted, ["abort": "requested"]) }
            return Self.answer(await control.result())
        case (.GET, "/metrics"):
            return HTTPResponse(
                statusCode: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: Data(metrics.render(control.status).utf8))
        case (_, "/status"), (_, "/ready"), (_, "/metrics"), (_, "/cutover"), (_, "/abort"):
            return Self.json(.methodNotAllowed, ["error": "\(request.method.rawValue) is not allowed on \(request.path)"])
        default:
            return Self.json(.notFound, ["error": "no such endpoint: \(request.path) (try /status, /ready, /cutover, /abort, /metrics)"])
        }
    }

    private struct ReadyAnswer: Encodable {
        var ready: Bool
        var reasons: [String]
        var writeDowntimeEstimateSeconds: Double?
    }

    private static func answer(_ result: MigrationResult) -> HTTPResponse {
        json(result.exitCode == 0 ? .ok : .internalServerError, result)
    }

    private static func json(_ status: HTTPStatusCode, _ value: some Encodable) -> HTTPResponse {
        let body = (try? MigrationStatus.encoder.encode(value)) ?? Data("{}".utf8)
        return HTTPResponse(statusCode: status, headers: [.contentType: "application/json"], body: body + Data("\n".utf8))
    }

    /// Compares in constant time, so the answer's timing does not tell how much of a guess was right.
    private static func bears(_ request: HTTPRequest, _ token: String) -> Bool {
        guard let header = request.headers[.authorization], header.hasPrefix("Bearer ") else { return false }
        let given = Array(header.dropFirst("Bearer ".count).utf8)
        let expected = Array(token.utf8)
        var difference = given.count ^ expected.count
        for index in expected.indices { difference |= Int(expected[index] ^ (index < given.count ? given[index] : 0)) }
        return difference == 0
    }
}

/// The status as Prometheus gauges, set from a fresh status on each scrape.
private final class Metrics: Sendable {
    private let registry = PrometheusCollectorRegistry()
    private let lock = Mutex(())

    func render(_ status: MigrationStatus) -> String {
        lock.withLock { _ in
            let unknown = Double.nan
            func gauge(_ name: String, _ help: String, _ value: Double?, labels: [(String, String)] = []) {
                let name = MetricNameDescriptor(namespace: "pg_dbmigrator", metricName: name, unitName: "", helpText: help)
                registry.makeGauge(descriptor: name, labels: labels).set(value ?? unknown)
            }
            for stage in Stage.allCases where ![.lag, .caughtUp, .fellBehind].contains(stage) {
                gauge("phase", "1 for the phase the run is in", stage.rawValue == status.phase ? 1 : 0, labels: [("phase", stage.rawValue)])
            }
            gauge("streaming", "1 once the target streams changes", status.streaming ? 1 : 0)
            gauge("ready", "1 when a cutover could start now", status.ready ? 1 : 0)
            gauge("lag_bytes", "WAL bytes the target has yet to apply", status.lag.map { Double($0.bytes) })
            gauge("lag_seconds", "how far behind the target is, in seconds", status.lag?.seconds)
            gauge("apply_rate_bytes_per_second", "WAL bytes applied per second", status.lag?.applyRateBytesPerSecond)
            gauge("copy_bytes", "bytes copied so far", status.copy.map { Double($0.bytes) })
            gauge("copy_total_bytes", "bytes to copy (on-disk estimate)", status.copy.map { Double($0.totalBytes) })
            gauge("copy_tables_done", "tables copied", status.copy.map { Double($0.tablesDone) })
            gauge("copy_tables", "tables to copy", status.copy.map { Double($0.tables) })
            gauge("retained_wal_bytes", "WAL the replication slot holds on the source", status.retainedWALBytes.map(Double.init))
            gauge("write_downtime_estimate_seconds", "writes held by a cutover started now", status.writeDowntimeEstimateSeconds)
            gauge("cutover_write_downtime_seconds", "writes held by the cutover, measured", status.cutover.writeDowntimeSeconds)
            gauge("warnings", "warnings in the status (the last 20)", Double(status.warnings.count))
            gauge("seconds_running", "seconds since the run started", status.secondsRunning)
            return registry.emitToString()
        }
    }
}
