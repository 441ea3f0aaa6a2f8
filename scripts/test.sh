#!/usr/bin/env bash
# Installs what is missing (libpq-dev, PostgreSQL server and client), builds,
# and runs every test. The tests start their own PostgreSQL servers.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prerequisites.sh
ensure_prerequisites
ensure_postgresql_18  # the cross-version tests migrate from Debian's PostgreSQL to PostgreSQL 18
ensure_prometheus_parser  # the /metrics test checks the text with Prometheus' own client parser

# The tree is kept formatted (.swift-format); swift-format ships with the Swift 6 toolchain.
if swift format --version >/dev/null 2>&1; then
    swift format lint --strict -r Sources Tests Examples Package.swift
else
    echo "note: swift format not in this toolchain; the format check is skipped" >&2
fi

swift build --build-tests
# A hung test must fail the run, not stall CI.
timeout --signal=KILL 1800 swift test
