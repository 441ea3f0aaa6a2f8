#!/usr/bin/env bash
# Demo: two throwaway local clusters and a sample database.
#  1. offline: migrate it with the built CLI, compare table by table.
#  2. online: migrate it again while an application keeps writing; wait for
#     CaughtUp, stop the writes, cut over with SIGINT (what Ctrl+C sends),
#     compare table by table.
# Comparisons are by row count and content checksum. Everything is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prerequisites.sh
source scripts/lib/clusters.sh
ensure_prerequisites
trap stop_clusters EXIT

echo "==> building pg_dbmigrator"
swift build --product pg_dbmigrator 2>&1 | tail -1
BIN=$(swift build --show-bin-path)/pg_dbmigrator

echo "==> starting source and target clusters"
SRC=$(start_cluster demo-source)
DST=$(start_cluster demo-target)
psql_at "$SRC" postgres -c "CREATE DATABASE shop"
psql_at "$SRC" shop -o /dev/null -f Tests/Fixtures/sample.sql
echo "    source on port $SRC (database shop), target on port $DST"

echo "==> offline migration"
# Passwords through the environment, not argv.
PG_DBMIGRATOR_SOURCE="postgresql://postgres:$CLUSTER_PASSWORD@127.0.0.1:$SRC/shop" \
PG_DBMIGRATOR_TARGET="postgresql://postgres:$CLUSTER_PASSWORD@127.0.0.1:$DST/shop" \
    "$BIN" --mode offline --jobs 2

echo "==> comparing every table (rows and content checksum)"
table_checksums "$SRC" shop > /tmp/pgdm-demo-source.txt
table_checksums "$DST" shop > /tmp/pgdm-demo-target.txt
if diff -u /tmp/pgdm-demo-source.txt /tmp/pgdm-demo-target.txt; then
    sed 's/^/    /' /tmp/pgdm-demo-target.txt | column -t -s'|'
    echo "==> source and target match ($(wc -l < /tmp/pgdm-demo-target.txt) tables)"
else
    echo "==> MISMATCH between source and target" >&2
    exit 1
fi

echo
echo "==> online migration while the application writes"
writer() {
    local i=0
    while [ ! -f "$WORK/stop-writer" ]; do
        i=$((i + 1))
        psql_at "$SRC" shop -c "
            INSERT INTO public.customers (email, name, signup_date) VALUES ('demo$i@example.com', 'Demo $i', '2025-01-01');
            UPDATE sales.orders SET status = 'shipped' WHERE id = $((i % 4000 + 1));
            INSERT INTO inventory.stock_movements (id, product_id, moved_on, qty) VALUES ($((200000 + i)), 1, '2024-03-01', 1);" \
            >/dev/null 2>&1 || true
    done
}
WORK=$(mktemp -d)
writer &
WRITER=$!
PG_DBMIGRATOR_SOURCE="postgresql://postgres:$CLUSTER_PASSWORD@127.0.0.1:$SRC/shop" \
PG_DBMIGRATOR_TARGET="postgresql://postgres:$CLUSTER_PASSWORD@127.0.0.1:$DST/shop_online" \
    "$BIN" --mode online --jobs 2 --cutover-poll-secs 1 --lag-threshold-bytes 65536 2> >(tee "$WORK/online.log" >&2) &
MIGRATOR=$!
for _ in $(seq 1 120); do
    grep -q "stage=CaughtUp" "$WORK/online.log" 2>/dev/null && break
    kill -0 "$MIGRATOR" 2>/dev/null || break
    sleep 1
done
touch "$WORK/stop-writer"; wait "$WRITER"
echo "==> writes stopped; cutting over (kill -INT, as Ctrl+C would)"
kill -INT "$MIGRATOR"
wait "$MIGRATOR"

echo "==> comparing every table (rows and content checksum)"
table_checksums "$SRC" shop > /tmp/pgdm-demo-source.txt
table_checksums "$DST" shop_online > /tmp/pgdm-demo-target.txt
rm -rf "$WORK"
if diff -u /tmp/pgdm-demo-source.txt /tmp/pgdm-demo-target.txt; then
    echo "==> source and target match after cutover ($(wc -l < /tmp/pgdm-demo-target.txt) tables, $(psql_at "$SRC" shop -At -c "SELECT count(*) FROM customers WHERE email LIKE 'demo%'") rows written during the migration)"
else
    echo "==> MISMATCH between source and target after cutover" >&2
    exit 1
fi
rm -f /tmp/pgdm-demo-source.txt /tmp/pgdm-demo-target.txt
