#!/usr/bin/env bash
# Benchmarks, measured in one run on this machine (absolute times mean little
# on a noisy machine; the ratios are the point):
#   offline  pg_dbmigrator --mode offline  vs  pg_dump -Fd -j J + pg_restore -j J
#   verify   pg_dbmigrator --mode verify   vs  SELECT count(*) of every table (psql)
# Dataset: pgbench -i -s SCALE (default 20) plus two secondary indexes.
# Usage: scripts/bench.sh [SCALE] [JOBS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prerequisites.sh
source scripts/lib/clusters.sh
ensure_prerequisites
trap stop_clusters EXIT
SCALE=${1:-20}; JOBS=${2:-2}; ROUNDS=${3:-3}

swift build -c release --product pg_dbmigrator 2>&1 | tail -1
BIN=$(swift build -c release --show-bin-path)/pg_dbmigrator
SRC=$(start_cluster bench-source "shared_buffers=256MB" "max_wal_size=4GB")
DST=$(start_cluster bench-target "shared_buffers=256MB" "max_wal_size=4GB")
psql_at "$SRC" postgres -c "CREATE DATABASE bench"
PGPASSWORD=$CLUSTER_PASSWORD "$PG_BIN/pgbench" -q -i -s "$SCALE" -h 127.0.0.1 -p "$SRC" -U postgres bench >/dev/null 2>&1
psql_at "$SRC" bench -c "CREATE INDEX ON pgbench_accounts (bid); CREATE INDEX ON pgbench_accounts (abalance)"
SIZE=$(psql_at "$SRC" bench -At -c "SELECT pg_database_size('bench')")
echo "dataset: pgbench scale $SCALE, $((SIZE / 1000000)) MB; jobs $JOBS; $ROUNDS rounds"

SOURCE_URL="postgresql://postgres:$CLUSTER_PASSWORD@127.0.0.1:$SRC/bench"
target_url() { echo "postgresql://postgres:$CLUSTER_PASSWORD@127.0.0.1:$DST/$1"; }
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
drop_target() { psql_at "$DST" postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null; }

OURS=(); DUMP=(); VERIFY=(); COUNT=()
for round in $(seq 1 "$ROUNDS"); do
    # Alternate which goes first, so neither always runs on a warmer cache.
    for method in $( ((round % 2)) && echo "ours dump" || echo "dump ours"); do
        drop_target copy
        start=$(now)
        if [ "$method" = ours ]; then
            PG_DBMIGRATOR_SOURCE=$SOURCE_URL PG_DBMIGRATOR_TARGET=$(target_url copy) \
                "$BIN" --mode offline --jobs "$JOBS" --verify off 2>/dev/null
            OURS+=("$(echo "$(now) - $start" | bc)")
        else
            dir=$(mktemp -d); rmdir "$dir"
            PGPASSWORD=$CLUSTER_PASSWORD "$PG_BIN/pg_dump" -Fd -j "$JOBS" -f "$dir" "host=127.0.0.1 port=$SRC user=postgres dbname=bench"
            psql_at "$DST" postgres -c "CREATE DATABASE copy" >/dev/null
            PGPASSWORD=$CLUSTER_PASSWORD "$PG_BIN/pg_restore" -j "$JOBS" -d "host=127.0.0.1 port=$DST user=postgres dbname=copy" "$dir"
            PGPASSWORD=$CLUSTER_PASSWORD "$PG_BIN/vacuumdb" --analyze-only -j "$JOBS" -q "host=127.0.0.1 port=$DST user=postgres dbname=copy"
            rm -rf "$dir"
            DUMP+=("$(echo "$(now) - $start" | bc)")
        fi
    done
    start=$(now)
    PG_DBMIGRATOR_SOURCE=$SOURCE_URL PG_DBMIGRATOR_TARGET=$(target_url copy) "$BIN" --mode verify --jobs "$JOBS" 2>/dev/null
    VERIFY+=("$(echo "$(now) - $start" | bc)")
    start=$(now)
    for port_db in "$SRC bench" "$DST copy"; do
        set -- $port_db
        psql_at "$1" "$2" -At -c "SELECT count(*) FROM pgbench_accounts; SELECT count(*) FROM pgbench_history;
                                  SELECT count(*) FROM pgbench_branches; SELECT count(*) FROM pgbench_tellers" >/dev/null
    done
    COUNT+=("$(echo "$(now) - $start" | bc)")
done

ours=$(printf '%s\n' "${OURS[@]}" | median); dump=$(printf '%s\n' "${DUMP[@]}" | median)
verify=$(printf '%s\n' "${VERIFY[@]}" | median); count=$(printf '%s\n' "${COUNT[@]}" | median)
TABLE_BYTES=$(psql_at "$SRC" bench -At -c "SELECT sum(pg_relation_size(oid)) FROM pg_class WHERE relname LIKE 'pgbench_%' AND relkind = 'r'")
printf '\n%-48s %10s %8s\n' "median of $ROUNDS" "seconds" "ratio"
printf '%-48s %10.2f %8.2f\n' "pg_dbmigrator --mode offline (dump path)" "$ours" "$(echo "$ours / $dump" | bc -l)"
printf '%-48s %10.2f %8.2f\n' "pg_dump -Fd -j $JOBS + pg_restore -j $JOBS + analyze" "$dump" 1
printf '%-48s %10.2f %8.2f   %.0f MB/s (both sides)\n' "pg_dbmigrator --mode verify (checksum every row)" "$verify" "$(echo "$verify / $count" | bc -l)" "$(echo "2 * $TABLE_BYTES / 1000000 / $verify" | bc -l)"
printf '%-48s %10.2f %8.2f\n' "count(*) of every table, both sides" "$count" 1
