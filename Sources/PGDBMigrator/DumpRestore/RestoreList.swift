/// The `pg_restore --list` of the archive, minus the entries the native copy
/// built itself: an entry is `dumpId; tableoid oid TYPE schema name owner`,
/// and a line starting with `;` is skipped by `pg_restore --use-list`.
struct RestoreList {
    var lines: [String]

    /// `built` holds `INDEX <pg_class oid>` and `CONSTRAINT <pg_constraint oid>`:
    /// the type and the catalog (1259 pg_class, 2606 pg_constraint) are checked
    /// with the oid, which alone may repeat across catalogs.
    func excluding(_ built: Set<String>) -> [String] {
        lines.map { line in
            let fields = line.split(separator: " ", maxSplits: 4)
            guard fields.count >= 4, fields[0].hasSuffix(";") else { return line }
            let catalog = fields[3] == "INDEX" ? "1259" : fields[3] == "CONSTRAINT" ? "2606" : nil
            guard let catalog, fields[1] == catalog, built.contains("\(fields[3]) \(fields[2])") else { return line }
            return ";" + line
        }
    }
}
