@testable import PGDBMigrator
import Testing

@Suite struct PatternTests {
    @Test("pg_dump name patterns become the regexes pg_dump itself would use")
    func patterns() {
        #expect(TableSchemas.regexes(for: "public.orders") == ("^(public)$", "^(orders)$"))
        #expect(TableSchemas.regexes(for: "Orders") == (nil, "^(orders)$"))
        #expect(TableSchemas.regexes(for: "\"Audit Log\".\"Events\"") == ("^(Audit Log)$", "^(Events)$"))
        #expect(TableSchemas.regexes(for: "s*.t?x") == ("^(s.*)$", "^(t.x)$"))
        #expect(TableSchemas.regexes(for: "\"a.b\".c$") == ("^(a\\.b)$", "^(c\\$)$"))
        #expect(TableSchemas.regexes(for: "\"q\"\"uote\"") == (nil, "^(q\"uote)$"))
    }

    @Test("tool versions are read from --version output")
    func versions() {
        #expect(PostgresTools.parseMajorVersion("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)") == 15)
        #expect(PostgresTools.parseMajorVersion("pg_restore (PostgreSQL) 9.6.24") == 9)
        #expect(PostgresTools.parseMajorVersion("nonsense") == nil)
    }

    @Test("child processes get the password through the environment only")
    func childArguments() throws {
        let endpoint = Endpoint(role: .source, connectionString: try .init("postgresql://u:pw%20x@h:1/d?sslmode=require"))
        #expect(endpoint.childDatabaseArgument.contains("sslmode=require"))
        #expect(!endpoint.childDatabaseArgument.contains("pw"))
        #expect(endpoint.childEnvironment == ["PGPASSWORD": "pw x"])
    }
}
