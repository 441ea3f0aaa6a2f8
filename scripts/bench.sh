#!/usr/bin/env bash
# The copy benchmark: every method on the same two servers, in the same run,
# alternating, so the ratios mean something on a noisy machine.
#
#   native    pg_dbmigrator --copy-method native --verify off
#   verified  pg_dbmigrator --copy-method native (the default: every row verified, --verify-method auto)
#   stream_verified  the same with --verify-method stream (every table digested as it is copied, the target read back)
#   server_verified  the same with --verify-method server (each server checksums its rows after the copy)
#   dump      pg_dbmigrator --copy-method dump
#   pg_dump   pg_dump -Fd -j J, then pg_restore -j J
#   pgcopydb  pgcopydb clone --table-jobs J --index-jobs J   (Debian's pgcopydb; skipped with a note if it cannot run)
#   raw       the raw bound: pg_dump --section=pre-data | psql; every table by
#             psql -c "COPY … TO STDOUT" | psql -c "COPY … FROM STDIN", J at a time;
#             then pg_restore -j J --section=post-data
# Every method ends with the target analyzed (pgcopydb runs VACUUM ANALYZE itself;
# the others run vacuumdb --analyze-only -j J), so all do the same work.
#
# Datasets: pgbench  pgbench -i -s SCALE (default 50) plus two secondary indexes on
#                    pgbench_accounts: one dominant table;
#           wide     eight tables of ~1 KB rows, a primary key and two secondary
#                    indexes each, WIDE_MB (default 1000) MB in all.
# Prints, per dataset, the median wall time of ROUNDS rounds, the ratios to
# each other method, and peak RSS; the native copy is checked by --mode verify,
# whose time is printed too (standalone verify); and the verified run's time over
# the unverified one's, round by round.
#
# TARGET_PG=18 makes the target PostgreSQL 18 (the relocatable build the cross-version tests use): an upgrade
# from the source's major version, every method using PostgreSQL 18's pg_dump, pg_restore and vacuumdb.
#
# Usage: scripts/bench.sh [DATASETS] [JOBS] [ROUNDS]     e.g. scripts/bench.sh pgbench,wide 2 3
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prerequisites.sh
source scripts/lib/clusters.sh
ensure_prerequisites
# The client tools every method uses: the target's major version's, as an upgrade should.
TOOLS=$PG_BIN
case ${TARGET_PG:-} in
    "") ;;
    18) ensure_postgresql_18; TOOLS=$PGDM_PG18_BIN ;;
    *) echo "error: TARGET_PG=$TARGET_PG: only 18 (or unset: the source's version) is known" >&2; exit 2 ;;
esac
DATASETS=${1:-pgbench,wide}; JOBS=${2:-2}; ROUNDS=${3:-3}
SCALE=${SCALE:-50}; WIDE_MB=${WIDE_MB:-1000}
# METHODS="native verified raw" scripts/bench.sh … measures only those.
read -r -a METHODS <<<"${METHODS:-native verified stream_verified server_verified dump pg_dump pgcopydb raw}"

if ! command -v pgcopydb >/dev/null 2>&1 || [ ! -x /usr/bin/time ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq pgcopydb time >/dev/null 2>&1 || true
fi
[ -x /usr/bin/time ] || { echo "error: /usr/bin/time is needed (apt-get install time)" >&2; exit 1; }
if ! command -v pgcopydb >/dev/null 2>&1; then
    echo "note: pgcopydb is not installed and could not be installed; its column is skipped" >&2
    read -r -a METHODS <<<"${METHODS[*]/pgcopydb/}"
fi

trap stop_clusters EXIT
swift build -c release --product pg_dbmigrator 2>&1 | tail -1
BIN=$(swift build -c release --show-bin-path)/pg_dbmigrator
SERVER=("shared_buffers=256MB" "max_wal_size=4GB" "max_connections=100")
SRC=$(start_cluster bench-source "${SERVER[@]}")
DST=$(PG_BIN=$TOOLS start_cluster bench-target "${SERVER[@]}")
export PGPASSWORD=$CLUSTER_PASSWORD
conn() { echo "host=127.0.0.1 port=$1 user=postgres dbname=$2"; }
url() { echo "postgresql://postgres@127.0.0.1:$1/$2"; }
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

build_pgbench() {
    psql_at "$SRC" postgres -c "CREATE DATABASE pgbench" >/dev/null
    "$PG_BIN/pgbench" -q -i -s "$SCALE" -h 127.0.0.1 -p "$SRC" -U postgres pgbench >/dev/null 2>&1
    psql_at "$SRC" pgbench -c "CREATE INDEX ON pgbench_accounts (bid); CREATE INDEX ON pgbench_accounts (abalance)" >/dev/null
}

build_wide() {
    psql_at "$SRC" postgres -c "CREATE DATABASE wide" >/dev/null
    local rows=$((WIDE_MB * 1000 / 8))  # ~1 KB a row
    for i in $(seq 1 8); do
        psql_at "$SRC" wide -c "CREATE TABLE t$i (id bigint PRIMARY KEY, a int NOT NULL, b timestamptz NOT NULL, payload text NOT NULL);
            INSERT INTO t$i SELECT g, (random() * 1e6)::int, now() - random() * interval '900 days', repeat(md5(random()::text), 30)
            FROM generate_series(1, $rows) g;
            CREATE INDEX ON t$i (a); CREATE INDEX ON t$i (b)" -c "VACUUM ANALYZE t$i" >/dev/null &
    done
    wait
}

analyze_target() { "$TOOLS/vacuumdb" --analyze-only -j "$JOBS" -q "$(conn "$DST" copy)"; }

# run_method METHOD DATASET: copies DATASET into the target's "copy" database; prints "seconds peak_rss_kB"
run_method() {
    local method=$1 db=$2 dir start rss=0 timing
    dir=$(mktemp -d /tmp/pgdm-bench-XXXXXX)
    psql_at "$DST" postgres -c "DROP DATABASE IF EXISTS copy WITH (FORCE)" >/dev/null
    # Each run starts with nothing left to write by the one before (or by the dataset's build).
    psql_at "$SRC" postgres -c CHECKPOINT >/dev/null
    psql_at "$DST" postgres -c CHECKPOINT >/dev/null
    sync
    start=$(now)
    case $method in
        native | dump | verified | stream_verified | server_verified)
            local copy_method=$method verify=off verify_method=auto
            case $method in
                verified) copy_method=native verify=strict ;;
                stream_verified) copy_method=native verify=strict verify_method=stream ;;
                server_verified) copy_method=native verify=strict verify_method=server ;;
            esac
            /usr/bin/time -f "%M" -o "$dir/rss" env PG_DBMIGRATOR_SOURCE="$(url "$SRC" "$db")" PG_DBMIGRATOR_TARGET="$(url "$DST" copy)" \
                "$BIN" --mode offline --copy-method "$copy_method" --jobs "$JOBS" --verify "$verify" --verify-method "$verify_method" \
                --pg-bin-dir "$TOOLS" >/dev/null 2>"$dir/log" \
                || { cat "$dir/log" >&2; return 1; }
            rss=$(cat "$dir/rss") ;;
        pg_dump)
            "$TOOLS/pg_dump" -Fd -j "$JOBS" -f "$dir/dump" "$(conn "$SRC" "$db")"
            psql_at "$DST" postgres -c "CREATE DATABASE copy" >/dev/null
            "$TOOLS/pg_restore" -j "$JOBS" -d "$(conn "$DST" copy)" "$dir/dump"
            analyze_target ;;
        pgcopydb)
            psql_at "$DST" postgres -c "CREATE DATABASE copy" >/dev/null
            PATH="$TOOLS:$PATH" /usr/bin/time -f "%M" -o "$dir/rss" pgcopydb clone --source "$(url "$SRC" "$db")" --target "$(url "$DST" copy)" \
                --table-jobs "$JOBS" --index-jobs "$JOBS" --dir "$dir/work" >"$dir/log" 2>&1 \
                || { tail -20 "$dir/log" >&2; rm -rf "$dir"; return 2; }
            rss=$(cat "$dir/rss") ;;
        raw)
            psql_at "$DST" postgres -c "CREATE DATABASE copy" >/dev/null
            "$TOOLS/pg_dump" --section=pre-data "$(conn "$SRC" "$db")" | "$TOOLS/psql" -q -X -v ON_ERROR_STOP=1 "$(conn "$DST" copy)" >/dev/null
            "$TOOLS/pg_dump" -Fc --section=post-data -f "$dir/post" "$(conn "$SRC" "$db")"
            psql_at "$SRC" "$db" -At -c "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                          WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                                          ORDER BY pg_table_size(c.oid) DESC" \
                | SRC_CONN="$(conn "$SRC" "$db")" DST_CONN="$(conn "$DST" copy)" xargs -P "$JOBS" -I{} sh -c \
                    '"$0/psql" -X -q -c "COPY {} TO STDOUT" "$SRC_CONN" | "$0/psql" -X -q -c "COPY {} FROM STDIN" "$DST_CONN"' "$TOOLS"
            "$TOOLS/pg_restore" -j "$JOBS" --section=post-data -d "$(conn "$DST" copy)" "$dir/post"
            analyze_target ;;
    esac
    echo "$(echo "$(now) - $start" | bc) $rss"
    rm -rf "$dir"
}

declare -A SECONDS_OF RSS_OF SKIPPED VERIFY_OF
IFS=, read -ra WANTED <<<"$DATASETS"
for db in "${WANTED[@]}"; do
    case $db in pgbench) build_pgbench ;; wide) build_wide ;; *) echo "unknown dataset $db" >&2; exit 2 ;; esac
    size=$(psql_at "$SRC" "$db" -At -c "SELECT pg_database_size(current_database())")
    echo "dataset $db: $((size / 1000000)) MB; jobs $JOBS; $ROUNDS rounds; methods ${METHODS[*]}; source $(psql_at "$SRC" postgres -At -c "SHOW server_version"), target $(psql_at "$DST" postgres -At -c "SHOW server_version")"
    # The first run after a build was the slowest whatever ran in it (by up to half): one run not counted.
    run_method native "$db" >/dev/null && echo "  warm-up run (native, not counted)"
    for round in $(seq 1 "$ROUNDS"); do
        # Rotate the order each round, and reverse it every other round, so no method always runs on a warmer
        # cache or right after the same other one.
        order=("${METHODS[@]:round % ${#METHODS[@]}}" "${METHODS[@]:0:round % ${#METHODS[@]}}")
        if [ $((round % 2)) = 0 ]; then
            for ((i = 0, j = ${#order[@]} - 1; i < j; i++, j--)); do
                swap=${order[i]}; order[i]=${order[j]}; order[j]=$swap
            done
        fi
        for method in "${order[@]}"; do
            [ -n "${SKIPPED[$method]:-}" ] && continue
            if result=$(run_method "$method" "$db"); then
                read -r secs rss <<<"$result"
                SECONDS_OF[$db.$method]+="$secs "
                [ "$rss" -gt "${RSS_OF[$db.$method]:-0}" ] && RSS_OF[$db.$method]=$rss
                printf '  round %d  %-16s %7.2f s\n' "$round" "$method" "$secs"
                if [ "$method" = native ] && [ "$round" = 1 ]; then
                    verify_start=$(now)
                    PG_DBMIGRATOR_SOURCE="$(url "$SRC" "$db")" PG_DBMIGRATOR_TARGET="$(url "$DST" copy)" \
                        "$BIN" --mode verify --jobs "$JOBS" --pg-bin-dir "$TOOLS" >/dev/null 2>&1 \
                        || { echo "error: the native copy of $db does not match the source" >&2; exit 1; }
                    VERIFY_OF[$db]=$(echo "$(now) - $verify_start" | bc)
                    printf '  native copy verified by --mode verify in %.2f s: every row matches\n' "${VERIFY_OF[$db]}"
                fi
            else
                echo "note: $method failed on $db; skipped from here on" >&2
                SKIPPED[$method]=1
            fi
        done
    done
    echo
    printf '%-16s %9s %10s %10s %10s %10s %12s\n' "$db" "median s" "÷ raw" "÷ pg_dump" "÷ pgcopydb" "÷ native" "peak RSS"
    for method in "${METHODS[@]}"; do
        [ -z "${SECONDS_OF[$db.$method]:-}" ] && { printf '%-16s %9s\n' "$method" "skipped"; continue; }
        m=$(printf '%s\n' ${SECONDS_OF[$db.$method]} | median)
        line=$(printf '%-16s %9.2f' "$method" "$m")
        for other in raw pg_dump pgcopydb native; do
            if [ -n "${SECONDS_OF[$db.$other]:-}" ]; then
                o=$(printf '%s\n' ${SECONDS_OF[$db.$other]} | median)
                line+=$(printf ' %10.2f' "$(echo "$m / $o" | bc -l)")
            else
                line+=$(printf ' %10s' "-")
            fi
        done
        rss=${RSS_OF[$db.$method]:-0}
        [ "$rss" -gt 0 ] && line+=$(printf ' %9d MB' $((rss / 1024))) || line+=$(printf ' %12s' "-")
        echo "$line"
    done
    [ -n "${VERIFY_OF[$db]:-}" ] && printf '%-16s %9.2f   (--mode verify of the native copy, once)\n' "verify alone" "${VERIFY_OF[$db]}"
    # The machine's speed drifts between rounds more than verification costs: each round's own ratio (its two runs
    # minutes apart at most) says more than the ratio of the medians.
    read -ra verified <<<"${SECONDS_OF[$db.verified]:-}"
    read -ra native <<<"${SECONDS_OF[$db.native]:-}"
    if [ "${#verified[@]}" -gt 0 ] && [ "${#verified[@]}" = "${#native[@]}" ]; then
        ratios=$(for i in "${!verified[@]}"; do echo "${verified[i]} / ${native[i]}" | bc -l; done)
        printf 'verified ÷ native, round by round: %s (median %.2f)\n' "$(printf '%.2f\n' $ratios | paste -sd' ')" "$(echo "$ratios" | median)"
    fi
    echo
    psql_at "$SRC" postgres -c "DROP DATABASE $db" >/dev/null
done
