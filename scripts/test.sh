#!/usr/bin/env bash
# Installs what is missing (libpq-dev, PostgreSQL server and client), builds,
# and runs every test. The tests start their own PostgreSQL servers.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prerequisites.sh
ensure_prerequisites

swift build --build-tests
swift test
