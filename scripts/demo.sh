#!/usr/bin/env bash
# Offline demo: two throwaway local clusters, a sample database loaded into
# one, migrated into the other with the built CLI, then compared table by
# table (row count and content checksum). Everything is removed at the end.
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
rm -f /tmp/pgdm-demo-source.txt /tmp/pgdm-demo-target.txt
