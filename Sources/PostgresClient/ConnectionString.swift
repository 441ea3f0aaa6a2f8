import CLibPQ
import Foundation

/// A libpq connection string, parsed by libpq itself.
///
/// Accepts everything `psql` accepts — `postgres://` and `postgresql://`
/// URIs (percent-encoded parts, query options such as `sslmode`, several
/// hosts), `keyword=value` strings, unix-socket hosts — because the parsing
/// is `PQconninfoParse`'s. The options are kept as libpq reported them, so
/// the string handed to `pg_dump` means exactly what the user wrote, minus
/// the password, which travels separately (see ``secretFreeKeywordValue``).
public struct ConnectionString: Sendable, Hashable {
    public struct Option: Sendable, Hashable {
        public var keyword: String
        public var value: String
    }

    /// The options the user set, in libpq's order. Includes the password, if any.
    public private(set) var options: [Option]

    public init(_ raw: String) throws(ConnectionStringError) {
        var errorMessage: UnsafeMutablePointer<CChar>?
        guard let parsed = PQconninfoParse(raw, &errorMessage) else {
            var message = "out of memory"
            if let errorMessage {
                message = String(cString: errorMessage)
                PQfreemem(errorMessage)
            }
            throw ConnectionStringError(message: ConnectionString.withoutQuotedInput(message))
        }
        defer { PQconninfoFree(parsed) }
        var options: [Option] = []
        var cursor = parsed
        while let keyword = cursor.pointee.keyword {
            if let value = cursor.pointee.val {
                options.append(Option(keyword: String(cString: keyword), value: String(cString: value)))
            }
            cursor += 1
        }
        self.options = options
    }

    /// No options: everything from the environment and libpq's defaults.
    public static let empty = ConnectionString(options: [])

    private init(options: [Option]) { self.options = options }

    public subscript(keyword: String) -> String? {
        options.first { $0.keyword == keyword }?.value
    }

    public var password: String? { self["password"] }

    /// The keywords whose values are secrets: every option libpq marks as a
    /// password (display character `*` in `PQconndefaults`: `password`,
    /// `sslpassword`, and whatever a newer libpq adds), plus those two by name.
    public static let secretKeywords: Set<String> = {
        var keywords: Set<String> = ["password", "sslpassword"]
        guard let defaults = PQconndefaults() else { return keywords }
        defer { PQconninfoFree(defaults) }
        var cursor = defaults
        while let keyword = cursor.pointee.keyword {
            if let display = cursor.pointee.dispchar, String(cString: display).hasPrefix("*") {
                keywords.insert(String(cString: keyword))
            }
            cursor += 1
        }
        return keywords
    }()

    /// The secret options that are set (see ``secretKeywords``).
    public var secrets: [Option] { options.filter { Self.secretKeywords.contains($0.keyword) } }

    /// A copy with `keyword` set to `value` (or removed when `value` is nil).
    public func setting(_ keyword: String, to value: String?) -> ConnectionString {
        var copy = self
        copy.options.removeAll { $0.keyword == keyword }
        if let value { copy.options.append(Option(keyword: keyword, value: value)) }
        return copy
    }

    /// `keyword='value' …` without any secret: what child processes get in
    /// their argv (`pg_dump --dbname=…`) and what run state files record. The
    /// secrets travel separately (the environment, a 0600 service file), where
    /// other users cannot read them.
    public var secretFreeKeywordValue: String { keywordValue(includingSecrets: false) }

    /// The one form in which a connection string is shown to people: every
    /// option except the secrets.
    public var redacted: String {
        let shown = secretFreeKeywordValue
        return shown.isEmpty ? "(libpq defaults)" : shown
    }

    /// `keyword='value' …`. With the secrets only where a server must store
    /// them (`CREATE SUBSCRIPTION … CONNECTION`); never for argv or logs.
    public func keywordValue(includingSecrets: Bool) -> String {
        options.filter { includingSecrets || !Self.secretKeywords.contains($0.keyword) }
            .map { "\($0.keyword)=\(Self.quote($0.value))" }
            .joined(separator: " ")
    }

    /// Masks every secret (the password, `sslpassword`, …), raw or
    /// percent-encoded, where it stands as a whole value in `text`, and every
    /// `password=`-like value or URI password whatever it is.
    ///
    /// A last line of defence for messages we did not write ourselves (server
    /// errors, child processes' stderr). Whole values only: a short password is
    /// never masked inside an ordinary word, which would both garble the message
    /// and give the password away ("********w-level security" for "ro").
    public func scrub(_ text: String) -> String {
        var text = Self.redactUnparsed(text)
        var forms: [String] = []
        for secret in secrets.map(\.value) where !secret.isEmpty {
            forms.append(secret)
            if let encoded = secret.addingPercentEncoding(withAllowedCharacters: .alphanumerics), encoded != secret {
                forms.append(encoded)
            }
        }
        // Longest first, so a secret containing another is masked whole.
        for form in forms.sorted(by: { $0.count > $1.count }) {
            let escaped = NSRegularExpression.escapedPattern(for: form)
            // Not inside a longer run of letters, digits or underscores.
            guard let expression = try? NSRegularExpression(pattern: "(?<![\\p{L}\\p{N}_])\(escaped)(?![\\p{L}\\p{N}_])") else { continue }
            text = expression.stringByReplacingMatches(
                in: text, range: NSRange(text.startIndex..., in: text), withTemplate: "********")
        }
        return text
    }

    /// libpq's parse errors quote pieces of the input (`missing "=" after "horse"`),
    /// which may be pieces of a password: every quoted piece but a lone punctuation
    /// mark is left out, so an error never echoes the string's content.
    static func withoutQuotedInput(_ message: String) -> String {
        guard let expression = try? NSRegularExpression(pattern: #""[^"]*""#) else { return "cannot parse the connection string" }
        var text = message
        for match in expression.matches(in: message, range: NSRange(message.startIndex..., in: message)).reversed() {
            guard let range = Range(match.range, in: text) else { continue }
            let inner = text[range].dropFirst().dropLast()
            if inner.count == 1, let character = inner.first, character.isPunctuation || character.isSymbol { continue }
            text.replaceSubrange(range, with: "\"…\"")
        }
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The database name libpq would use, with its environment and defaults
    /// applied (`PGDATABASE`, then the user name). No network I/O.
    public var resolvedDatabase: String? { resolvedOption { PQdb($0) } }

    /// The user name libpq would use (`PGUSER`, then the OS user). No network I/O.
    public var resolvedUser: String? { resolvedOption { PQuser($0) } }

    private func resolvedOption(_ read: (OpaquePointer) -> UnsafeMutablePointer<CChar>?) -> String? {
        // PQconnectStartParams applies the defaults before it touches the
        // network; we read the result and drop the attempt.
        let conn = withKeywordValueArrays(options) { PQconnectStartParams($0, $1, 0) }
        guard let conn else { return nil }
        defer { PQfinish(conn) }
        return read(conn).map { String(cString: $0) }
    }

    static func quote(_ value: String) -> String {
        if !value.isEmpty, value.allSatisfy({ $0.isLetter || $0.isNumber || "._-/:,@".contains($0) }) {
            return value
        }
        return "'" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
    }

    /// Best-effort redaction of a string libpq could not parse: hides what
    /// looks like a URI password (`:secret@`) or the value of any secret keyword
    /// (`password=`, `sslpassword=`, …).
    public static func redactUnparsed(_ raw: String) -> String {
        var text = raw
        for range in passwordRanges(in: raw).reversed() { text.replaceSubrange(range, with: "********") }
        return text
    }

    /// Where a password appears in connection-string text, parsed or not:
    /// the password of a URI's `user:password@`, and the values of secret
    /// keywords (keyword form or URI query).
    public static func passwordRanges(in text: String) -> [Range<String.Index>] {
        let keywords = secretKeywords.sorted().map { NSRegularExpression.escapedPattern(for: $0) }.joined(separator: "|")
        let patterns = [
            #"(?<=://)[^:@/?]*:([^@/?]*)@"#,
            #"(?i)(?:"# + keywords + #")\s*=\s*('(?:[^'\\]|\\.)*'?|[^\s'&]+)"#,
        ]
        var ranges: [Range<String.Index>] = []
        for pattern in patterns {
            guard let expression = try? NSRegularExpression(pattern: pattern) else { continue }
            for match in expression.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                if let range = Range(match.range(at: 1), in: text), !range.isEmpty { ranges.append(range) }
            }
        }
        return ranges.sorted { $0.lowerBound < $1.lowerBound }
    }
}

/// A connection string that libpq could not parse. The message never contains a password.
public struct ConnectionStringError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

/// Done once, before the first connection: OpenSSL is asked to keep its locks until the process is
/// gone, so a connection being opened while the process exits cannot crash the exit.
private let openSSLKeptUntilExit: Void = pgdm_keep_openssl_until_exit()

/// Calls `body` with NUL-terminated keyword and value arrays as libpq's `…Params` functions want them.
/// Every connection this package opens starts here, so OpenSSL is set up first.
func withKeywordValueArrays<R>(
    _ options: [ConnectionString.Option],
    _ body: (UnsafePointer<UnsafePointer<CChar>?>, UnsafePointer<UnsafePointer<CChar>?>) -> R
) -> R {
    openSSLKeptUntilExit
    let keywords = options.map { strdup($0.keyword) } + [nil]
    let values = options.map { strdup($0.value) } + [nil]
    defer {
        keywords.forEach { free($0) }
        values.forEach { free($0) }
    }
    let constKeywords = keywords.map { UnsafePointer($0) }
    let constValues = values.map { UnsafePointer($0) }
    return constKeywords.withUnsafeBufferPointer { k in
        constValues.withUnsafeBufferPointer { v in body(k.baseAddress!, v.baseAddress!) }
    }
}
