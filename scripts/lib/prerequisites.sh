# Installs what building and testing pg_dbmigrator needs, when it is missing.
# Sourced by scripts/test.sh, scripts/demo.sh and scripts/bench.sh.

ensure_prerequisites() {
    local need=()
    command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
    [ -f /usr/include/postgresql/libpq-fe.h ] || need+=(libpq-dev)
    local bindir=""
    if command -v pg_config >/dev/null 2>&1; then bindir=$(pg_config --bindir); fi
    [ -n "$bindir" ] && [ -x "$bindir/initdb" ] || need+=(postgresql)
    [ -n "$bindir" ] && [ -x "$bindir/pg_dump" ] || need+=(postgresql-client)
    [ -d "$(pg_config --sharedir 2>/dev/null)/extension" ] && ls "$(pg_config --sharedir)/extension/hstore.control" >/dev/null 2>&1 \
        || need+=(postgresql-contrib)
    command -v runuser >/dev/null 2>&1 || need+=(util-linux)
    command -v openssl >/dev/null 2>&1 || need+=(openssl)  # the TLS tests make their certificates
    if [ ${#need[@]} -gt 0 ]; then
        echo "installing: ${need[*]}" >&2
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    # The server binaries live in $(pg_config --bindir) on Debian, not on PATH.
    PG_BIN=$(pg_config --bindir)
    export PG_BIN
    if ! command -v swift >/dev/null 2>&1; then
        echo "error: swift not found; install the Swift 6 toolchain (https://www.swift.org/install/linux/)" >&2
        exit 1
    fi
}
