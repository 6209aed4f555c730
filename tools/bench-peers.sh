#!/usr/bin/env bash
# Verbatim beside the peers of ../shared/bench/peers in one run, on the shared
# 1M-event workload: the fdatasync/zstd references, SQLite FTS5, PostgreSQL
# 15 + GIN, DuckDB on Parquet, and Verbatim's row (tools/peers/verbatim_bench.py:
# ingest, search, the two SQL aggregations hot and cold). Needs root
# (apt-get, runuser postgres), like the peers' own run_all.sh.
# usage: [N=1000000] [RUNS=3] tools/bench-peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="$(pwd)/../shared/bench/peers"
T="${TMPDIR:-$(dirname "$(mktemp -u)")}"
export PEERS_WORKDIR="${PEERS_WORKDIR:-$T/verbatim-peers}"
RUNS="${RUNS:-3}"
PY=/usr/bin/python3
if ! [ -x /usr/lib/postgresql/15/bin/postgres ] || ! $PY -c 'import psycopg2' 2>/dev/null || ! $PY -c 'import venv, ensurepip' 2>/dev/null || ! command -v zstd >/dev/null; then
  apt-get update -qq
  had_main=0; [ -f /var/run/postgresql/15-main.pid ] && had_main=1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql python3-psycopg2 python3-venv zstd util-linux unzip >/dev/null
  if [ "$had_main" = 0 ] && [ -f /var/run/postgresql/15-main.pid ]; then kill -INT "$(head -1 /var/run/postgresql/15-main.pid)" || true; fi
fi
VENV="${VENV:-$T/verbatim-peers-venv}"   # DuckDB, as the peers' run_all.sh installs it
if ! "$VENV/bin/python" -c 'import duckdb, pytz' 2>/dev/null; then
  $PY -m venv "$VENV" && "$VENV/bin/pip" install -q duckdb==2.0.0 pytz
fi
PY="$PY" tools/bench-workload.sh >/dev/null
cargo build --release --bins -q
BIN="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)"
R="$PEERS_WORKDIR/verbatim-run.jsonl"; : > "$R"
step() { local name=$1; shift; echo "=== $name ($(uptime))"; "$@" 2>&1 | tee "$PEERS_WORKDIR/$name.log"; grep '^RESULT ' "$PEERS_WORKDIR/$name.log" | sed 's/^RESULT {/{"rep": 1, /' >> "$R" || true; }
step limits   $PY "$PEERS/limits_bench.py" --runs "$RUNS"
step sqlite   $PY "$PEERS/sqlite_bench.py" --runs "$RUNS"
step postgres $PY "$PEERS/pg_bench.py" --runs "$RUNS"
step duckdb   "$VENV/bin/python" "$PEERS/duckdb_bench.py" --runs "$RUNS"
step verbatim $PY tools/peers/verbatim_bench.py --bin "$BIN" --runs "$RUNS"
$PY "$PEERS/summarize.py" "$R"
