import Foundation
import PostgresClient
import Testing

@testable import PGDBMigrator

@Suite struct ControlLogicTests {
    static func config(listen: String?, tokenFile: String? = nil) throws -> MigrationConfig {
        var config = MigrationConfig(
            mode: .online, source: try ConnectionString("host=127.0.0.1 dbname=a"), target: try ConnectionString("host=127.0.0.1 dbname=b"))
        config.listen = listen
        config.listenTokenFile = tokenFile
        return config
    }

    @Test("--listen takes an IP address and port; beyond loopback only with a token")
    func listenAddresses() throws {
        for (listen, host, v6) in [
            ("127.0.0.1:0", "127.0.0.1", false), ("localhost:9187", "127.0.0.1", false), ("[::1]:9187", "::1", true),
        ] {
            let address = try ListenAddress(config: Self.config(listen: listen))
            #expect(address.host == host && address.isIPv6 == v6 && address.token == nil)
        }
        for listen in ["0.0.0.0:9187", "10.1.2.3:80", "[::]:9187", "db.example.com:9187", "127.0.0.1", "127.0.0.1:99999"] {
            #expect(throws: MigrationError.self, "\(listen)") { try ListenAddress(config: Self.config(listen: listen)) }
        }
        #expect(throws: MigrationError.self, "a token file without --listen") {
            try ListenAddress(config: Self.config(listen: nil, tokenFile: "/dev/null"))
        }
    }

    @Test("a control socket in the state directory when the path fits in 107 bytes, else a stable short one of this user's")
    func socketPaths() {
        #expect(ControlSocket.path(forStateDirectory: "/var/lib/m") == "/var/lib/m/control.sock")
        let deep = "/var/lib/" + String(repeating: "x", count: 100)
        let short = ControlSocket.path(forStateDirectory: deep)
        #expect(short.hasPrefix("/tmp/pg_dbmigrator-\(getuid())/") && short.hasSuffix(".sock") && short.utf8.count <= 107)
        #expect(ControlSocket.path(forStateDirectory: deep) == short, "the same for every process")
        #expect(ControlSocket.path(forStateDirectory: deep + "y") != short)
    }

    @Test("the write downtime estimate: the backlog plus the cutover's statements at the measured round trip")
    func downtimeEstimate() {
        let plain = DowntimeEstimate(freezing: false, tables: 10, sequences: 0, flushDelay: 0.2)
        let frozen = DowntimeEstimate(freezing: true, tables: 10, sequences: 5, flushDelay: 0)
        let idle = plain.seconds(lagSeconds: 0, catchUpSeconds: 0, roundTrip: .milliseconds(2))
        #expect(idle == 0.2 + 12 * DowntimeEstimate.statementFloor, "a fast round trip costs at least the floor per statement")
        #expect(abs(plain.seconds(lagSeconds: 3, catchUpSeconds: 1, roundTrip: .milliseconds(2)) - (3 + idle)) < 1e-9, "the longer backlog")
        #expect(
            abs(frozen.seconds(lagSeconds: 0, catchUpSeconds: nil, roundTrip: .milliseconds(20)) - Double(12 + 10 + 8 + 20) * 0.01) < 1e-9)
    }

    @Test("a cutover request is refused before streaming and outside online mode, made once however often asked")
    func cutoverRequests() {
        let offline = MigrationControl(mode: .offline)
        guard case .refused(let why) = offline.requestCutover() else { Issue.record("offline cut over"); return }
        #expect(why.contains("only an online migration"))
        let online = MigrationControl(mode: .online)
        online.live.observe(MigrationEvent(stage: .restore, message: "copying"), movesPhase: true)
        guard case .refused(let phase) = online.requestCutover() else { Issue.record("cut over during the copy"); return }
        #expect(phase.contains("phase Restore") && !online.cutover.isRequested)
        online.live.observe(MigrationEvent(stage: .streamApply, kind: .streaming, message: "streaming"), movesPhase: true)
        #expect(online.requestCutover() == .accepted && online.cutover.isRequested)
        #expect(online.requestCutover() == .alreadyRequested)
        #expect(online.status.cutover.state == "requested" && !online.status.ready)
        let result = MigrationResult(outcome: "completed", exitCode: 0, message: "done")
        online.finish(result)
        #expect(online.requestCutover() == .ended(result))
    }
}
