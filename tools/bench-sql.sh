#!/usr/bin/env bash
# SQL benchmark (release, not in CI): the report queries of query/reports/
# over EVENTS loadgen events (10M by default), hot and cold, through the
# server beside DuckDB and standalone DataFusion on the same Parquet files,
# with Parquet bytes per event (tools/peers/sql_reports_bench.py). The peers'
# two aggregations on the shared 1M workload, beside PostgreSQL, SQLite and
# DuckDB, are in tools/bench-peers.sh.
# The archive is kept in $BENCH_DIR/verbatim-sql-bench and reused while it
# holds EVENTS events (FRESH=1 rebuilds it).
# usage: [EVENTS=10000000] [RUNS=3] [BENCH_DIR=/tmp] [FRESH=1] tools/bench-sql.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${EVENTS:-10000000}"
RUNS="${RUNS:-3}"
T="${BENCH_DIR:-${TMPDIR:-/tmp}}"
W="$T/verbatim-sql-bench"
VENV="${VENV:-$T/verbatim-peers-venv}"
if ! "$VENV/bin/python" -c 'import duckdb, datafusion, pytz' 2>/dev/null; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q duckdb==2.0.0 datafusion==55.0.0 pytz
fi
cargo build --release --bins -q
BIN="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)"
D="$W/data"
if [ "${FRESH:-0}" = 1 ] || ! [ -f "$W/events-$EVENTS" ]; then
  rm -rf "$W"; mkdir -p "$W"
  TOKEN=$("$BIN/verbatim" --data-dir "$D" token create --role ingest --sources 'loadgen-*')
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  VERBATIM_HTTP_LISTEN="127.0.0.1:$PORT" VERBATIM_LOG=warn "$BIN/verbatim" --data-dir "$D" serve 2>"$W/server.log" &
  SERVER_PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "ingesting $EVENTS loadgen events (4 clients, 1000-event batches)"
  "$BIN/verbatim-loadgen" run --url "http://127.0.0.1:$PORT" --token "$TOKEN" --clients 4 --batch 1000 --events "$EVENTS" > "$W/ingest.json"
  cat "$W/ingest.json"; echo
  kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true
  touch "$W/events-$EVENTS"
fi
"$VENV/bin/python" tools/peers/sql_reports_bench.py --bin "$BIN" --data "$D" --runs "$RUNS"
