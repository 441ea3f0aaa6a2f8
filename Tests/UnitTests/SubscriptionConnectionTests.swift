import Foundation
import Logging
import PostgresClient
import Testing

@testable import PGDBMigrator

/// How the subscription's connection string is made from the tool's own: no server needed.
@Suite struct SubscriptionConnectionTests {
    final class Warnings: @unchecked Sendable {
        private let lock = NSLock()
        private var messages: [String] = []
        func record(_ event: MigrationEvent) { lock.withLock { if event.level == .warning { messages.append(event.message) } } }
        var all: [String] { lock.withLock { messages } }
    }

    func resolve(own: String, given: String? = nil, targetVersion: Int = 150_000, warnings: Warnings = Warnings()) throws
        -> ConnectionString
    {
        let events = EventEmitter(handler: warnings.record, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        return try SubscriptionConnection.resolve(
            own: try ConnectionString(own), given: try given.map(ConnectionString.init), targetServerVersion: targetVersion, events: events)
    }

    @Test("the tool's settings in effect carry over, minus what belongs to this process alone")
    func carriesOwnSettings() throws {
        let result = try resolve(
            own: "host=db port=5433 user=app dbname=shop password=pw sslmode=verify-full sslrootcert=/etc/ca.pem "
                + "target_session_attrs=read-write application_name=pg_dbmigrator passfile=/root/.pgpass client_encoding=UTF8")
        #expect(result["sslmode"] == "verify-full" && result["sslrootcert"] == "/etc/ca.pem")
        #expect(result["target_session_attrs"] == "read-write" && result.password == "pw")
        #expect(result["application_name"] == nil && result["passfile"] == nil && result["client_encoding"] == nil)
    }

    @Test(
        "--subscription-source weaker than the tool's own sslmode is refused; as strict or stricter, it is used with the password filled in"
    )
    func givenSource() throws {
        let own = "host=db user=app dbname=shop password=pw sslmode=verify-full"
        for weaker in ["sslmode=require", "sslmode=disable", ""] {
            #expect(throws: MigrationError.self) { try resolve(own: own, given: "host=10.0.0.5 user=app dbname=shop \(weaker)") }
        }
        let given = try resolve(own: own, given: "host=10.0.0.5 user=app dbname=shop sslmode=verify-full sslrootcert=/srv/ca.pem")
        #expect(given["host"] == "10.0.0.5" && given["sslrootcert"] == "/srv/ca.pem" && given.password == "pw")
        // Another user's password is never lent.
        let other = try resolve(own: own, given: "host=10.0.0.5 user=replicator dbname=shop sslmode=verify-full")
        #expect(other.password == nil)
    }

    @Test("keywords the target server's libpq does not know are left out, each with a warning")
    func olderTarget() throws {
        let warnings = Warnings()
        let own = try ConnectionString("host=db user=app sslmode=require").setting("require_auth", to: "scram-sha-256")
            .setting("sslnegotiation", to: "direct")
        let events = EventEmitter(handler: warnings.record, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        let on15 = try SubscriptionConnection.resolve(own: own, given: nil, targetServerVersion: 150_004, events: events)
        #expect(on15["require_auth"] == nil && on15["sslnegotiation"] == nil && on15["sslmode"] == "require")
        #expect(warnings.all.count == 2 && warnings.all.allSatisfy { $0.contains("PostgreSQL 15") })
        let on17 = try SubscriptionConnection.resolve(own: own, given: nil, targetServerVersion: 170_002, events: events)
        #expect(on17["require_auth"] == "scram-sha-256" && on17["sslnegotiation"] == "direct")
    }

    @Test("online, a multi-host source without target_session_attrs is asked for the primary (read-write); offline it is left alone")
    func multiHostPrimary() throws {
        let source = try ConnectionString("host=standby,primary port=5432,5433 user=app dbname=shop")
        let target = try ConnectionString("host=t dbname=shop")
        var config = MigrationConfig(mode: .online, source: source, target: target)
        #expect(config.effective.source["target_session_attrs"] == "read-write")
        config.mode = .offline
        #expect(config.effective.source["target_session_attrs"] == nil)
        config.mode = .online
        config.source = source.setting("target_session_attrs", to: "any")
        #expect(config.effective.source["target_session_attrs"] == "any", "the operator's own choice stays")
        config.source = try ConnectionString("host=primary user=app dbname=shop")
        #expect(config.effective.source["target_session_attrs"] == nil)
    }

    @Test("sslpassword is a secret like the password: never shown, scrubbed as a whole value, masked in unparsed text")
    func sslPasswordIsSecret() throws {
        #expect(ConnectionString.secretKeywords.isSuperset(of: ["password", "sslpassword"]))
        let connection = try ConnectionString("host=db user=app sslkey=/k sslpassword='open sesame' password=ro")
        #expect(!connection.redacted.contains("sesame") && !connection.secretFreeKeywordValue.contains("sslpassword"))
        #expect(connection.redacted.contains("sslkey=/k"))
        #expect(connection.scrub("could not load key: open sesame was wrong") == "could not load key: ******** was wrong")
        #expect(
            connection.scrub("query would be affected by row-level security policy")
                == "query would be affected by row-level security policy")
        #expect(!ConnectionString.redactUnparsed("host=db sslpassword=hunter2 =broken").contains("hunter2"))
    }
}
