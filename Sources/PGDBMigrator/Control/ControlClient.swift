import FlyingFox
import FlyingSocks
import Foundation
import PostgresClient

/// Talks to a running migration through its control socket: what `pg_dbmigrator status`, `cutover`
/// and `abort` do. The socket is found from the state directory, given or derived from the target
/// as the migration itself derives it.
public struct ControlClient: Sendable {
    public var socketPath: String

    public init(socketPath: String) { self.socketPath = socketPath }

    /// The socket of the migration `config` describes (its `stateDirectory`, else its target).
    public init(config: MigrationConfig) {
        self.init(stateDirectory: config.stateDirectory, target: config.target)
    }

    /// The socket of the migration with this state directory, else of the one into `target`.
    public init(stateDirectory: String?, target: ConnectionString) {
        socketPath = ControlSocket.path(forStateDirectory: RunStateStore.directory(given: stateDirectory, target: target))
    }

    /// What a cutover or abort request got.
    public enum Reply: Sendable, Equatable {
        /// The run ended, so (after waiting for it).
        case ended(MigrationResult)
        /// Asked for, without waiting.
        case requested
        /// Refused, and why.
        case refused(String)
    }

    public func status() async throws -> MigrationStatus {
        let (_, body) = try await send(.GET, "/status")
        return try MigrationStatus.decoder.decode(MigrationStatus.self, from: body)
    }

    public func cutover(wait: Bool = true) async throws -> Reply { try await request("/cutover", wait: wait) }

    public func abort(wait: Bool = true) async throws -> Reply { try await request("/abort", wait: wait) }

    private func request(_ path: String, wait: Bool) async throws -> Reply {
        let (status, body) = try await send(.POST, path, query: wait ? [] : [.init(name: "wait", value: "false")])
        switch status {
        case .accepted:
            return .requested
        case .conflict:
            let error = (try? JSONSerialization.jsonObject(with: body) as? [String: String])?["error"]
            return .refused(error ?? "refused")
        default:
            return .ended(try MigrationStatus.decoder.decode(MigrationResult.self, from: body))
        }
    }

    private func send(_ method: HTTPMethod, _ path: String, query: [HTTPRequest.QueryItem] = []) async throws -> (HTTPStatusCode, Data) {
        guard FileManager.default.fileExists(atPath: socketPath) else {
            throw MigrationError(
                .validate, "no migration is running here: there is no control socket \(socketPath)",
                fix: "pass the \(Setting.stateDirectory) (or \(Setting.target)) the migration was started with", code: .connection)
        }
        var client = HTTPClient()
        let request = HTTPRequest(
            method: method, version: .http11, path: path, query: query, headers: [.host: "localhost", .connection: "close"],
            body: HTTPBodySequence(data: Data()))
        do {
            let response = try await client.sendHTTPRequest(request, to: .unix(path: socketPath))
            return (response.statusCode, try await response.bodyData)
        } catch let error as SocketError {
            let reason = if case .failed(_, let errno, _) = error { String(cString: strerror(errno)) } else { "\(error)" }
            throw MigrationError(
                .validate, "cannot reach the migration through \(socketPath): \(reason)",
                fix: "the migration that made it is no longer running (its log says how it ended); "
                    + "a permission error means it belongs to another OS user", code: .connection)
        }
    }
}
