import PostgresClient
import Testing

@Suite struct ConnectionStringTests {
    @Test("URIs with percent-encoded parts and query options keep every option")
    func uri() throws {
        let connection = try ConnectionString(
            "postgresql://app%40corp:p%40ss%3Aw%2Frd@db.example:6543/shop%20db?sslmode=require&application_name=x")
        #expect(connection["user"] == "app@corp")
        #expect(connection.password == "p@ss:w/rd")
        #expect(connection["host"] == "db.example")
        #expect(connection["port"] == "6543")
        #expect(connection["dbname"] == "shop db")
        #expect(connection["sslmode"] == "require")
        #expect(connection["application_name"] == "x")
    }

    @Test("postgres:// and keyword=value forms, unix sockets and several hosts")
    func otherForms() throws {
        #expect(try ConnectionString("postgres://u@h/d")["dbname"] == "d")
        let keywordValue = try ConnectionString("host=/var/run/postgresql port=5433 dbname='my db' user=me password='it\\'s'")
        #expect(keywordValue["host"] == "/var/run/postgresql")
        #expect(keywordValue["dbname"] == "my db")
        #expect(keywordValue.password == "it's")
        let socketURI = try ConnectionString("postgresql://%2Fvar%2Frun%2Fpostgresql/shop")
        #expect(socketURI["host"] == "/var/run/postgresql")
        let multi = try ConnectionString("postgresql://h1:5432,h2:5433/db?target_session_attrs=read-write")
        #expect(multi["host"] == "h1,h2")
        #expect(multi["port"] == "5432,5433")
        #expect(multi["target_session_attrs"] == "read-write")
    }

    @Test("the string given to child processes has every option but the password, and parses back the same")
    func passwordless() throws {
        let original = try ConnectionString("postgresql://u:s3cr%27t@h:5/d%20b?sslmode=verify-full&sslrootcert=/a%20b/ca.pem")
        let childForm = original.secretFreeKeywordValue
        #expect(!childForm.contains("s3cr"))
        let reparsed = try ConnectionString(childForm)
        #expect(reparsed.options == original.options.filter { $0.keyword != "password" })
        #expect(reparsed["sslrootcert"] == "/a b/ca.pem")
        #expect(reparsed["dbname"] == "d b")
    }

    @Test("redaction and scrubbing never show the password")
    func redaction() throws {
        let connection = try ConnectionString("postgresql://u:Top%2FSecret@h/d")
        #expect(!connection.redacted.contains("Top"))
        #expect(connection.redacted.contains("host=h"))
        #expect(connection.scrub("failed for Top/Secret and Top%2FSecret") == "failed for ******** and ********")
        // Whole values only: a short password is never masked inside a word (that would reveal it), and
        // a password= value is masked whatever it is.
        let short = try ConnectionString("host=h user=u password=ro")
        #expect(
            short.scrub("query would be affected by row-level security policy") == "query would be affected by row-level security policy")
        #expect(short.scrub("password for ro was wrong: 'ro'") == "password for ******** was wrong: '********'")
        #expect(short.scrub("CONNECTION 'host=x password=other'") == "CONNECTION 'host=x password=********'")
    }

    @Test("a parse error never echoes a piece of the string")
    func parseErrorsDoNotEcho() {
        do {
            _ = try ConnectionString("host=h password=correct horse battery")
            Issue.record("an unquoted password with spaces must not parse")
        } catch {
            #expect(!error.message.contains("horse") && !error.message.contains("battery"), "\(error.message)")
            #expect(error.message.contains("missing \"=\""), "\(error.message)")
        }
    }

    @Test("a malformed string is rejected with libpq's reason, and the password is not echoed")
    func malformed() {
        #expect(throws: ConnectionStringError.self) { try ConnectionString("postgresql://u:Hunter2@[::1/db") }
        do {
            _ = try ConnectionString("postgresql://u:Hunter2@[::1/db")
        } catch {
            #expect(!error.message.contains("Hunter2"))
            #expect(error.message.contains("IPv6"))
        }
        #expect(throws: ConnectionStringError.self) { try ConnectionString("host=h password") }
        #expect(ConnectionString.redactUnparsed("x password = 'a b' y") == "x password = ******** y")
        #expect(ConnectionString.redactUnparsed("postgres://me:pw@h/d") == "postgres://me:********@h/d")
    }

    @Test("setting and removing options")
    func setting() throws {
        let connection = try ConnectionString("postgresql://u@h/d")
        #expect(connection.setting("dbname", to: "postgres")["dbname"] == "postgres")
        #expect(connection.setting("dbname", to: nil)["dbname"] == nil)
    }
}

@Suite struct SQLQuotingTests {
    @Test func identifiers() {
        #expect(SQL.identifier("plain") == "\"plain\"")
        #expect(SQL.identifier("Mixed \"Case\"") == "\"Mixed \"\"Case\"\"\"")
        #expect(SQL.qualified("a.b", "c") == "\"a.b\".\"c\"")
    }

    @Test func literals() {
        #expect(SQL.literal("it's") == "'it''s'")
        #expect(SQL.literal("back\\slash") == "E'back\\\\slash'")
        #expect(SQL.literal("") == "''")
    }
}
