#!/usr/bin/env bash
# The frozen cutover's write downtime against the database's size: for each pgbench scale, an
# online migration with --freeze-source-at-cutover while pgbench writes at a fixed rate, cut over
# (SIGINT) once caught up. Prints, per scale, the database size, the write downtime the tool
# measured (from the freeze to the event that says the target is ready for writes), the downtime
# the last heartbeat before the request estimated, and how long the verification after the switch
# took. The downtime should not grow with the size: verify runs after the switch, against the
# frozen source and the target as of the barrier.
#
# Usage: scripts/bench-downtime.sh [SCALES] [TPS]     e.g. scripts/bench-downtime.sh "20 100" 800
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prerequisites.sh
source scripts/lib/clusters.sh
ensure_prerequisites
SCALES=${1:-20 100}; TPS=${2:-800}

trap 'kill $(jobs -p) 2>/dev/null || true; stop_clusters' EXIT
swift build -c release --product pg_dbmigrator 2>&1 | tail -1
BIN=$(swift build -c release --show-bin-path)/pg_dbmigrator
SERVER=("shared_buffers=256MB" "max_wal_size=4GB" "max_connections=100")
SRC=$(start_cluster downtime-source "${SERVER[@]}")
DST=$(start_cluster downtime-target "${SERVER[@]}")
export PGPASSWORD=$CLUSTER_PASSWORD
url() { echo "postgresql://postgres@127.0.0.1:$1/$2"; }

printf '%-7s %10s %22s %14s %18s %10s\n' scale "size MB" "write downtime (s)" "estimated (s)" "verify after (s)" "tps seen"
for scale in $SCALES; do
    db="pgbench_$scale"
    psql_at "$SRC" postgres -c "CREATE DATABASE $db" >/dev/null
    "$PG_BIN/pgbench" -q -i -s "$scale" -h 127.0.0.1 -p "$SRC" -U postgres "$db" >/dev/null 2>&1
    size=$(psql_at "$SRC" "$db" -At -c "SELECT pg_database_size(current_database()) / 1000000")
    work=$(mktemp -d)
    # A fixed write rate, running before the slot exists and through the cutover (the freeze ends its sessions).
    "$PG_BIN/pgbench" -n -c 8 -j 2 -R "$TPS" -T 3600 -h 127.0.0.1 -p "$SRC" -U postgres "$db" >"$work/pgbench.log" 2>&1 &
    load=$!
    PG_DBMIGRATOR_SOURCE="$(url "$SRC" "$db")" PG_DBMIGRATOR_TARGET="$(url "$DST" "$db")" \
        "$BIN" --mode online --jobs 2 --json --freeze-source-at-cutover --set-replica-identity-full \
        --slot-name "slot_$scale" --publication "pub_$scale" --subscription-name "sub_$scale" \
        --cutover-poll-secs 1 --json-heartbeat >"$work/events.ndjson" 2>"$work/stderr.log" &
    run=$!
    until grep -q '"stage":"CaughtUp"' "$work/events.ndjson" 2>/dev/null; do
        kill -0 "$run" 2>/dev/null || { cat "$work/stderr.log" >&2; exit 1; }
        sleep 0.5
    done
    sleep 5  # streaming under load for a while
    kill -INT "$run"
    wait "$run" || { cat "$work/stderr.log" >&2; exit 1; }
    kill "$load" 2>/dev/null || true
    wait "$load" 2>/dev/null || true
    downtime=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    event = json.loads(line)
    if event.get("kind") == "targetReady":
        print("%.2f" % event["detail"]["write_downtime_seconds"])' "$work/events.ndjson")
    # What the last heartbeat before the request estimated.
    estimate=$(python3 -c '
import json, sys
last = None
for line in open(sys.argv[1]):
    event = json.loads(line)
    if event.get("stage") == "Cutover": break
    last = event.get("detail", {}).get("write_downtime_estimate_seconds", last)
print("%.2f" % last)' "$work/events.ndjson")
    verify=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    event = json.loads(line)
    if event.get("stage") == "Verify" and "seconds" in event.get("detail", {}):
        print("%.2f" % event["detail"]["seconds"])' "$work/events.ndjson" | tail -1)
    tps=$(grep -o 'tps = [0-9.]*' "$work/pgbench.log" | head -1 | cut -d' ' -f3)
    printf '%-7s %10s %22s %14s %18s %10s\n' "$scale" "$size" "$downtime" "$estimate" "${verify:-?}" "${tps:-aborted by the freeze}"
    rm -rf "$work"
done
