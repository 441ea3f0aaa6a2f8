import FlyingSocks
import Foundation

/// `listen` checked: an IP address and port, loopback unless a token guards it.
struct ListenAddress {
    var host: String
    var port: UInt16
    var isIPv6: Bool
    /// The token requests must bear, read from `listenTokenFile`.
    var token: String?

    init(config: MigrationConfig) throws(MigrationError) {
        func refuse(_ message: String, fix: String? = nil) -> MigrationError {
            MigrationError(.validate, message, fix: fix, code: .invalidArgument)
        }
        guard let listen = config.listen else {
            throw refuse("\(Setting.listenTokenFile) guards the HTTP endpoints of \(Setting.listen), which was not given")
        }
        guard let colon = listen.lastIndex(of: ":"), let port = UInt16(listen[listen.index(after: colon)...]) else {
            throw refuse("\(Setting.listen) takes an address and a port, such as 127.0.0.1:9187 or [::1]:9187; got \(listen)")
        }
        var host = String(listen[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host == "localhost" { host = "127.0.0.1" }
        var v4 = in_addr()
        var v6 = in6_addr()
        let isIPv4 = inet_pton(AF_INET, host, &v4) == 1
        isIPv6 = !isIPv4 && inet_pton(AF_INET6, host, &v6) == 1
        guard isIPv4 || isIPv6 else {
            throw refuse("\(Setting.listen) needs an IP address (or localhost), not a host name: \(host)")
        }
        let loopback = isIPv4 ? UInt32(bigEndian: v4.s_addr) >> 24 == 127 : host == "::1" || host == "0:0:0:0:0:0:0:1"
        self.host = host
        self.port = port
        if let file = config.listenTokenFile {
            var info = stat()
            guard stat(file, &info) == 0, let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw refuse("cannot read the token file \(file) of \(Setting.listenTokenFile)")
            }
            guard info.st_mode & 0o077 == 0 else {
                throw refuse(
                    "the token file \(file) can be read by other users", fix: "chmod 600 \(file), so only its owner reads the token")
            }
            let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard token.count >= 16 else {
                throw refuse(
                    "the token in \(file) is shorter than 16 characters", fix: "put a long random token in it: openssl rand -hex 32")
            }
            self.token = token
        } else if !loopback {
            throw refuse(
                "\(Setting.listen) \(listen) is reachable from other hosts, and nothing guards cutover and abort there",
                fix: "listen on 127.0.0.1, or give \(Setting.listenTokenFile) with a token that requests must bear")
        }
    }

    func socketAddress() throws -> any SocketAddress {
        isIPv6 ? try sockaddr_in6.inet6(ip6: host, port: port) : try sockaddr_in.inet(ip4: host, port: port)
    }
}
