/// The one place where identifiers and literals are made safe for SQL text.
///
/// Every name that reaches a statement goes through ``identifier(_:)``,
/// every value that cannot be a `$n` parameter goes through ``literal(_:)``.
public enum SQL {
    /// `"name"` with embedded quotes doubled: `a"b` becomes `"a""b"`.
    public static func identifier(_ name: String) -> String {
        name.utf8.contains(UInt8(ascii: "\"")) ? "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : "\"" + name + "\""
    }

    /// `schema.name`, each part quoted.
    public static func qualified(_ schema: String, _ name: String) -> String {
        identifier(schema) + "." + identifier(name)
    }

    /// A string literal with quotes doubled; uses the `E''` form when a
    /// backslash is present so the result means the same whatever
    /// `standard_conforming_strings` is.
    public static func literal(_ value: String) -> String {
        let quoted = value.replacingOccurrences(of: "'", with: "''")
        if quoted.contains("\\") {
            return "E'" + quoted.replacingOccurrences(of: "\\", with: "\\\\") + "'"
        }
        return "'" + quoted + "'"
    }

    /// A text array value, `{"a","b\"c"}`, for a `$n::text[]` parameter: each
    /// element double-quoted, with `"` and `\` escaped.
    public static func textArray(_ values: [String]) -> String {
        "{"
            + values.map { "\"" + $0.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\"" }
            .joined(separator: ",") + "}"
    }

    /// One field of a `COPY … FROM STDIN` row in text format: backslash, tab,
    /// newline and carriage return escaped.
    public static func copyTextField(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\t", with: "\\t")
            .replacingOccurrences(of: "\n", with: "\\n").replacingOccurrences(of: "\r", with: "\\r")
    }
}
