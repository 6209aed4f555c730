#!/usr/bin/env bash
# A/B of a change to the SQL path (release, not in CI): the peers' two
# aggregations on the shared 1M-event workload through two builds of
# Verbatim in alternating rounds (tools/peers/sql_ab_bench.py), with DuckDB's
# figures for the same queries on the same machine in the same run
# (../shared/bench/peers/duckdb_bench.py). A is a directory of release
# binaries of the reference commit (e.g. a copy of target/release made
# before the change); B defaults to this checkout's release build.
# usage: [ROUNDS=3] [RUNS=15] [COLD=5] tools/bench-sql-ab.sh A_DIR [B_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
A="$(cd "${1:?usage: tools/bench-sql-ab.sh A_DIR [B_DIR]}" && pwd)"
PEERS="$(pwd)/../shared/bench/peers"
T="${TMPDIR:-$(dirname "$(mktemp -u)")}"
export PEERS_WORKDIR="${PEERS_WORKDIR:-$T/verbatim-peers}"
VENV="${VENV:-$T/verbatim-peers-venv}"
if ! "$VENV/bin/python" -c 'import duckdb, pytz' 2>/dev/null; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q duckdb==2.0.0 pytz
fi
tools/bench-workload.sh >/dev/null
if [ -n "${2:-}" ]; then
  B="$(cd "$2" && pwd)"
else
  cargo build --release --bins -q
  B="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)"
fi
echo "=== duckdb ($(uptime))"
"$VENV/bin/python" "$PEERS/duckdb_bench.py" --runs "${RUNS:-15}"
echo "=== verbatim A=$A B=$B ($(uptime))"
python3 tools/peers/sql_ab_bench.py --a "$A" --b "$B" --rounds "${ROUNDS:-3}" --runs "${RUNS:-15}" --cold "${COLD:-5}"
