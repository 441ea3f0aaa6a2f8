import Foundation

/// Certificates for TLS tests, made with openssl: a CA, a server certificate
/// for 127.0.0.1 signed by it, a server certificate from another CA nobody
/// trusts (to swap in), and a client certificate for `clientName` whose key is
/// encrypted with ``clientKeyPassphrase`` (so libpq needs `sslpassword`).
///
/// Owned by the server's OS user and readable by it (keys 0600): the target
/// server's apply worker reads the same CA and client files as the tool.
struct TLSFiles {
    let directory: String
    let clientKeyPassphrase: String
    var caCertificate: String { directory + "/ca.crt" }
    var serverCertificate: String { directory + "/server.crt" }
    var serverKey: String { directory + "/server.key" }
    var clientCertificate: String { directory + "/client.crt" }
    var clientKey: String { directory + "/client.key" }

    /// Server settings that turn TLS on with the trusted certificate (and verify client certificates).
    var serverSettings: [String: String] {
        ["ssl": "on", "ssl_cert_file": serverCertificate, "ssl_key_file": serverKey, "ssl_ca_file": caCertificate]
    }

    static func make(clientName: String) async throws -> TLSFiles {
        let directory = try TestCluster.makeDirectory(name: "tls")
        chmod(directory, 0o755)
        let files = TLSFiles(directory: directory, clientKeyPassphrase: "key phrase \(UUID().uuidString.prefix(8))")
        func openssl(_ arguments: [String]) async throws {
            let result = try await TestCluster.run("/usr/bin/env", ["openssl"] + arguments)
            guard result.status == 0 else { throw TestSupportError("openssl \(arguments.joined(separator: " ")) failed: \(result.output)") }
        }
        let curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        let extensions = directory + "/san.ext"
        try "subjectAltName=IP:127.0.0.1,DNS:localhost\n".write(toFile: extensions, atomically: true, encoding: .utf8)
        for authority in ["ca", "rogue-ca"] {
            try await openssl(
                ["req", "-x509"] + curve + [
                    "-nodes", "-keyout", "\(directory)/\(authority).key", "-out", "\(directory)/\(authority).crt",
                    "-days", "2", "-subj", "/CN=pgdm test \(authority)",
                ])
        }
        // server.* from the trusted CA, rogue.* (same names) from the other one.
        for (name, authority) in [("server", "ca"), ("rogue", "rogue-ca")] {
            try await openssl(
                ["req"] + curve + [
                    "-nodes", "-keyout", "\(directory)/\(name).key", "-out", "\(directory)/\(name).csr", "-subj", "/CN=127.0.0.1",
                ])
            try await openssl(
                [
                    "x509", "-req", "-in", "\(directory)/\(name).csr", "-CA", "\(directory)/\(authority).crt", "-CAkey",
                    "\(directory)/\(authority).key", "-CAcreateserial", "-out", "\(directory)/\(name).crt", "-days", "2",
                    "-extfile", extensions,
                ])
        }
        try await openssl(
            ["req"] + curve + [
                "-keyout", files.clientKey, "-passout", "pass:\(files.clientKeyPassphrase)", "-out", "\(directory)/client.csr",
                "-subj", "/CN=\(clientName)",
            ])
        try await openssl(
            [
                "x509", "-req", "-in", "\(directory)/client.csr", "-CA", files.caCertificate, "-CAkey", "\(directory)/ca.key",
                "-CAcreateserial", "-out", files.clientCertificate, "-days", "2",
            ])
        for file in try FileManager.default.contentsOfDirectory(atPath: directory) {
            let path = directory + "/" + file
            chmod(path, file.hasSuffix(".key") ? 0o600 : 0o644)
            try TestCluster.chownToServerUser(path)
        }
        return files
    }

    /// Makes the server present the certificate from the CA nobody trusts (`rogue: true`) or the
    /// trusted one again; the server reads it at its next reload.
    func presentRogueCertificate(_ rogue: Bool) throws {
        let manager = FileManager.default
        if !manager.fileExists(atPath: directory + "/trusted.crt") {
            try manager.copyItem(atPath: serverCertificate, toPath: directory + "/trusted.crt")
            try manager.copyItem(atPath: serverKey, toPath: directory + "/trusted.key")
        }
        let from = rogue ? "rogue" : "trusted"
        try overwrite(serverCertificate, withContentsOf: directory + "/\(from).crt")
        try overwrite(serverKey, withContentsOf: directory + "/\(from).key")
    }

    /// Overwrites `path`'s contents with `source`'s, keeping its owner and mode.
    private func overwrite(_ path: String, withContentsOf source: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: source))
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.truncate(atOffset: 0)
        try handle.write(contentsOf: data)
        try handle.close()
    }
}
