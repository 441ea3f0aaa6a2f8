@testable import PGDBMigrator
import Testing

@Suite struct PatternTests {
    @Test("pg_dump name patterns become the regexes pg_dump itself would use")
    func patterns() {
        func regexes(_ pattern: String) -> (String?, String) { NamePattern(pattern).regexes }
        #expect(regexes("public.orders") == ("^(public)$", "^(orders)$"))
        #expect(regexes("Orders") == (nil, "^(orders)$"))
        #expect(regexes("\"Audit Log\".\"Events\"") == ("^(Audit Log)$", "^(Events)$"))
        #expect(regexes("s*.t?x") == ("^(s.*)$", "^(t.x)$"))
        #expect(regexes("\"a.b\".c$") == ("^(a\\.b)$", "^(c\\$)$"))
        #expect(regexes("\"q\"\"uote\"") == (nil, "^(q\"uote)$"))
        // Outside quotes, regular expression characters keep their meaning, as pg_dump passes them through...
        #expect(regexes("public.(t1|gen)") == ("^(public)$", "^((t1|gen))$"))
        #expect(regexes("t[0-9]+") == (nil, "^(t[0-9]+)$"))
        // ...except `$`, always literal, and `[]`, an array type's name; inside quotes nothing is special.
        #expect(regexes("int4[]") == (nil, "^(int4\\[])$"))
        #expect(regexes("\"t(1)\"") == (nil, "^(t\\(1\\))$"))
        // database.schema.table, as pg_dump allows (a dot inside quotes is no separator).
        #expect(NamePattern("shop.public.orders").partCount == 3)
        #expect(NamePattern("shop.public.orders").databaseRegex(parts: 3) == "^(shop)$")
        #expect(NamePattern("\"a.b\".c").partCount == 2)
        #expect(NamePattern("a.b.c.d").partCount == 4)
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
