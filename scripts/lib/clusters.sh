# Throwaway PostgreSQL clusters for scripts: initdb + pg_ctl on a free
# loopback port in a temporary directory, as the postgres OS user when run
# as root (initdb refuses root). All are stopped and removed on exit.

# Callers start clusters in command substitutions (PORT=$(start_cluster …)), which run in subshells:
# the directories are recorded in a file, so that stop_clusters in the calling shell finds them all.
CLUSTER_REGISTRY=$(mktemp /tmp/pgdm-clusters-XXXXXX)
CLUSTER_PASSWORD=${CLUSTER_PASSWORD:-demo-Pass-123}

as_server_user() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# start_cluster NAME [extra postgres -c settings...] ; prints the port
start_cluster() {
    local name=$1; shift
    local dir port
    dir=$(mktemp -d "/tmp/pgdm-$name-XXXXXX")
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    printf '%s' "$CLUSTER_PASSWORD" > "$dir/pw"
    [ "$(id -u)" = 0 ] && chown postgres "$dir/pw"
    as_server_user "$PG_BIN/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pw" -A scram-sha-256 \
        -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
    port=$(free_port)
    local opts="-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c wal_level=logical"
    opts+=" -c max_wal_senders=10 -c max_replication_slots=10 -c fsync=off -c synchronous_commit=off"
    for setting in "$@"; do opts+=" -c $setting"; done
    as_server_user "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "$opts" -w start >/dev/null
    echo "$dir" >> "$CLUSTER_REGISTRY"
    echo "$port"
}

stop_clusters() {
    local dir
    while read -r dir; do
        as_server_user "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
        rm -rf "$dir"
    done < "$CLUSTER_REGISTRY"
    rm -f "$CLUSTER_REGISTRY"
}

# psql_at PORT DB [psql args...]
psql_at() {
    local port=$1 db=$2; shift 2
    PGPASSWORD=$CLUSTER_PASSWORD "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
        "host=127.0.0.1 port=$port user=postgres dbname=$db" "$@"
}

# Per-table row count and content checksum of every user table, one line each.
table_checksums() {
    local port=$1 db=$2
    psql_at "$port" "$db" -At <<'SQL'
SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 3; SET bytea_output = 'hex';
SELECT format('SELECT %L, count(*), coalesce(md5(string_agg(md5(t::text), '''' ORDER BY md5(t::text))), ''-'') FROM ONLY %s t',
              quote_ident(n.nspname) || '.' || quote_ident(c.relname), quote_ident(n.nspname) || '.' || quote_ident(c.relname))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
ORDER BY n.nspname, c.relname
\gexec
SQL
}
