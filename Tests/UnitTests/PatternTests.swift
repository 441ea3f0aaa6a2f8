import Foundation
import Testing

@testable import PGDBMigrator

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
        let child = try endpoint.childConnection()
        #expect(child.arguments.count == 1 && child.arguments[0].contains("sslmode=require"))
        #expect(!child.arguments[0].contains("pw"))
        #expect(child.environment == ["PGPASSWORD": "pw x"])
        #expect(child.directory == nil)
    }

    @Test("sslpassword, which has no environment variable, reaches a child through a 0600 service file, removed after")
    func childSSLPassword() throws {
        let endpoint = Endpoint(
            role: .source, connectionString: try .init("host=h user=u password=pw sslkey=/k.key sslpassword='key phrase'"))
        let child = try endpoint.childConnection()
        #expect(!child.arguments.joined().contains("key phrase") && child.arguments[0].contains("service=pg_dbmigrator"))
        #expect(child.arguments[0].contains("sslkey=/k.key"))
        let file = try #require(child.environment["PGSERVICEFILE"])
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "[pg_dbmigrator]\nsslpassword=key phrase\n")
        let permissions = try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int
        #expect(permissions == 0o600)
        child.remove()
        #expect(!FileManager.default.fileExists(atPath: file))

        let withService = Endpoint(role: .source, connectionString: try .init("service=prod sslpassword=x"))
        #expect(throws: MigrationError.self) { try withService.childConnection() }
    }
}
