#!/usr/bin/env bash
# Relay apply against the target's own subscription, draining the same backlog. For each method:
# an online migration of a pgbench database (scale SCALE) until caught up, aborted (the slot keeps
# every change), a backlog written by unthrottled pgbench for SECONDS, then --resume: the time from
# re-attaching to CaughtUp is the drain, the backlog's transactions per drain second the rate. Also
# prints the resumed process's peak RSS. The relay/subscription rate ratio is the figure that matters
# (the issue asks for at least 0.7).
#
# Usage: scripts/bench-relay.sh [SCALE] [SECONDS]     e.g. scripts/bench-relay.sh 20 30
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prerequisites.sh
source scripts/lib/clusters.sh
ensure_prerequisites
SCALE=${1:-20}; SECONDS_OF_LOAD=${2:-30}
[ -x /usr/bin/time ] || { echo "error: /usr/bin/time is needed (apt-get install time)" >&2; exit 1; }

trap 'kill $(jobs -p) 2>/dev/null || true; stop_clusters' EXIT
swift build -c release --product pg_dbmigrator 2>&1 | tail -1
BIN=$(swift build -c release --show-bin-path)/pg_dbmigrator
SERVER=("shared_buffers=256MB" "max_wal_size=4GB" "max_connections=100")
SRC=$(start_cluster relay-source "${SERVER[@]}")
DST=$(start_cluster relay-target "${SERVER[@]}")
export PGPASSWORD=$CLUSTER_PASSWORD
url() { echo "postgresql://postgres@127.0.0.1:$1/$2"; }
printf '%-13s %12s %10s %14s %12s\n' method "backlog tx" "drain s" "tx per second" "peak RSS"
declare -A RATE
for method in subscription relay; do
    db="bench_$method"
    psql_at "$SRC" postgres -c "CREATE DATABASE $db" >/dev/null
    "$PG_BIN/pgbench" -q -i -s "$SCALE" -h 127.0.0.1 -p "$SRC" -U postgres "$db" >/dev/null 2>&1
    work=$(mktemp -d)
    args=(--mode online --jobs 2 --json --state-dir "$work/state" --apply "$method" --slot-name "slot_$method"
        --publication "pub_$method" --set-replica-identity-full --lag-threshold-bytes 65536 --cutover-poll-secs 0.5 --cutover-fast-poll-ms 100)
    [ "$method" = subscription ] && args+=(--subscription-name "sub_$method")
    export PG_DBMIGRATOR_SOURCE="$(url "$SRC" "$db")" PG_DBMIGRATOR_TARGET="$(url "$DST" "$db")"
    "$BIN" "${args[@]}" >"$work/first.ndjson" 2>"$work/first.log" &
    run=$!
    until grep -q '"stage":"CaughtUp"' "$work/first.ndjson" 2>/dev/null; do
        kill -0 "$run" 2>/dev/null || { cat "$work/first.log" >&2; exit 1; }
        sleep 0.5
    done
    "$BIN" abort --state-dir "$work/state" >/dev/null 2>&1 || true
    wait "$run" 2>/dev/null || true
    # The backlog: unthrottled writes while nothing applies.
    backlog=$("$PG_BIN/pgbench" -n -c 4 -j 2 -T "$SECONDS_OF_LOAD" -h 127.0.0.1 -p "$SRC" -U postgres "$db" 2>/dev/null \
        | awk '/number of transactions actually processed/ { split($0, a, ": "); split(a[2], b, "/"); print b[1] }')
    /usr/bin/time -f "%M" -o "$work/rss" "$BIN" "${args[@]}" --resume >"$work/resumed.ndjson" 2>"$work/resumed.log" &
    run=$!
    # Event time stamps have whole seconds: the drain is timed here, polling every 50 ms.
    attached=""
    until grep -q '"stage":"CaughtUp"' "$work/resumed.ndjson" 2>/dev/null; do
        kill -0 "$run" 2>/dev/null || { cat "$work/resumed.log" >&2; exit 1; }
        [ -z "$attached" ] && grep -q 're-attached' "$work/resumed.ndjson" 2>/dev/null && attached=$(date +%s.%N)
        sleep 0.05
    done
    drain=$(printf '%.2f' "$(echo "$(date +%s.%N) - ${attached:-$(date +%s.%N)}" | bc -l)")
    "$BIN" cutover --state-dir "$work/state" >/dev/null 2>&1 || { cat "$work/resumed.log" >&2; exit 1; }
    wait "$run" || { cat "$work/resumed.log" >&2; exit 1; }
    rate=$(echo "$backlog / $drain" | bc -l)
    RATE[$method]=$rate
    printf '%-13s %12s %10s %14.0f %9d MB\n' "$method" "$backlog" "$drain" "$rate" $(($(cat "$work/rss") / 1024))
    rm -rf "$work"
done
printf 'relay / subscription rate: %.2f\n' "$(echo "${RATE[relay]} / ${RATE[subscription]}" | bc -l)"
