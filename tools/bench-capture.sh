#!/usr/bin/env bash
# Capture proxy benchmark (release, not in CI): relayed IRC latency and
# throughput through verbatim-proxy vs a direct connection, in relaxed/express
# and strict/recoverable, beside fdatasync measured in the same run; then
# concurrent relayed connections held and memory per connection.
# usage: [MESSAGES=5000] [CONNS=20000] [BENCH_DIR=/tmp] tools/bench-capture.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p verbatim --bin verbatim
cargo build --release -q -p verbatim-ingest --bins
cargo bench -q -p verbatim-ingest --bench capture --no-run
BIN="${CARGO_TARGET_DIR:-target}/release"
W="$(mktemp -d "${BENCH_DIR:-/tmp}/verbatim-capture-bench.XXXXXX")"
SERVER_PID=
trap '[ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null; rm -rf "$W"' EXIT

# The per-process open-file limit decides how the concurrency run is spread.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TOKEN=$("$BIN/verbatim" --data-dir "$W/data" token create --role ingest --sources 'proxy-bench-*')
VERBATIM_HTTP_LISTEN="127.0.0.1:$PORT" VERBATIM_LOG=warn "$BIN/verbatim" --data-dir "$W/data" serve 2>"$W/server.log" &
SERVER_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
# Let the build's writeback finish: it would otherwise sit in the fsync figures.
sync; sleep 5
echo "machine: $(nproc) cores; $(uptime)"
BENCH=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/capture-* | grep -v '\.d$' | head -1)
PROXY_BIN="$BIN/verbatim-proxy" SERVER_URL="http://127.0.0.1:$PORT" TOKEN="$TOKEN" WORK="$W" \
  MESSAGES="${MESSAGES:-5000}" CONNS="${CONNS:-20000}" "$BENCH"
echo "archive after the run: $(curl -s -H "Authorization: Bearer $(cat "$W/data/admin.token")" "http://127.0.0.1:$PORT/v1/status" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("log head", d.get("log",{}).get("head"))' 2>/dev/null || echo '?')"
