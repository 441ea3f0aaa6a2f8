import PostgresClient

/// The connection string the target server's apply worker uses to reach the
/// source: as strict as the tool's own connection, never weaker.
///
/// Without `--subscription-source` it is built from the settings in effect on
/// the tool's own source session (`PQconninfo`), wherever they came from —
/// the connection string, a service file, the environment (`PGSSLMODE`,
/// `PGSSLROOTCERT`, `PGPASSWORD`) or the password file — so TLS mode, root
/// certificate, host name checks and `target_session_attrs` carry over. With
/// it, that string is used as given, filled with the password when it names
/// the same user, and refused when its `sslmode` is weaker than the tool's.
/// Either way, only keywords the target server's libpq knows are sent.
enum SubscriptionConnection {
    /// Settings of one client that another must not inherit: how this process found its
    /// settings (service, passfile), who it says it is (the apply worker names itself after the
    /// subscription), and what the walreceiver sets itself.
    static let notCarried: Set<String> = [
        "service", "servicefile", "passfile", "application_name", "fallback_application_name", "replication",
        "client_encoding", "sslkeylogfile",
    ]

    /// Keywords newer than PostgreSQL 15's libpq, with the major version that introduced them:
    /// an older target server rejects the whole connection string over any of them.
    static let introducedIn: [String: Int] = [
        "require_auth": 16, "sslcertmode": 16, "load_balance_hosts": 16, "gssdelegation": 16,
        "sslnegotiation": 17,
        "min_protocol_version": 18, "max_protocol_version": 18, "scram_client_key": 18, "scram_server_key": 18,
        "oauth_issuer": 18, "oauth_client_id": 18, "oauth_client_secret": 18, "oauth_scope": 18, "sslkeylogfile": 18,
    ]

    /// `sslmode` values from weakest to strictest.
    static let sslModes = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

    /// The subscription's connection string. `own` is ``Connection/settingsInEffect()`` of the
    /// tool's source session; `given` is `--subscription-source`. Throws when `given` is weaker
    /// than `own`; warns about each keyword the target server would not know, which is left out.
    static func resolve(
        own: ConnectionString, given: ConnectionString?, targetServerVersion: Int, events: EventEmitter
    ) throws -> ConnectionString {
        var result: ConnectionString
        if var given {
            let ownMode = own["sslmode"] ?? "prefer", givenMode = given["sslmode"] ?? "prefer"
            if strength(givenMode) < strength(ownMode) {
                throw MigrationError(
                    .validate,
                    "\(Setting.subscriptionSource) asks sslmode=\(givenMode), weaker than the sslmode=\(ownMode) the tool's own "
                        + "connection to the source uses: the target server's apply worker would be less protected than the tool",
                    fix: "add sslmode=\(ownMode) to \(Setting.subscriptionSource)"
                        + (ownMode.hasPrefix("verify") ? ", with sslrootcert= a CA file on the target server" : ""))
            }
            if given.password == nil, let password = own.password, given.resolvedUser == own["user"] ?? own.resolvedUser {
                given = given.setting("password", to: password)
            }
            result = given
        } else {
            result = own
            for keyword in notCarried { result = result.setting(keyword, to: nil) }
        }
        let targetMajor = targetServerVersion / 10000
        let unknown = result.options.map(\.keyword).filter { (introducedIn[$0] ?? 0) > targetMajor }
        for keyword in unknown {
            result = result.setting(keyword, to: nil)
            events.warning(
                .validate,
                "the subscription's connection string leaves out \(keyword): the target server (PostgreSQL \(targetMajor)) "
                    + "does not know it (PostgreSQL \(introducedIn[keyword] ?? 0) and later)",
                ["keyword": .string(keyword)])
        }
        return result
    }

    static func strength(_ sslmode: String) -> Int { sslModes.firstIndex(of: sslmode) ?? 0 }
}
