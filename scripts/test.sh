#!/usr/bin/env bash
# Installs what is missing (libpq-dev, PostgreSQL server and client), builds,
# and runs every test. The tests start their own PostgreSQL servers.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prerequisites.sh
ensure_prerequisites

swift build --build-tests
# A hung test must fail the run, not stall CI.
timeout --signal=KILL 1800 swift test
