/// An error from the server or from libpq, with the server's fields when there are any.
///
/// `description` carries the server's message, detail and hint but never the
/// connection string: callers may log it as it is.
public struct PostgresError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The connection could not be established (network, authentication, missing database).
        case connection
        /// The server rejected a statement.
        case server
        /// libpq or the protocol failed (connection lost mid-query, unexpected state).
        case client
    }

    public var kind: Kind
    public var message: String
    /// Five-character SQLSTATE, for server errors.
    public var sqlState: String?
    public var detail: String?
    public var hint: String?

    public init(kind: Kind, message: String, sqlState: String? = nil, detail: String? = nil, hint: String? = nil) {
        self.kind = kind
        self.message = message
        self.sqlState = sqlState
        self.detail = detail
        self.hint = hint
    }

    public var description: String {
        var text = message
        if let sqlState { text += " (SQLSTATE \(sqlState))" }
        if let detail, !detail.isEmpty { text += "; detail: \(detail)" }
        if let hint, !hint.isEmpty { text += "; hint: \(hint)" }
        return text
    }

    /// SQLSTATE `insufficient_privilege`, by name, for readable call sites.
    public static let insufficientPrivilege = "42501"
}
