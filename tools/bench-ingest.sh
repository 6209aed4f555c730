#!/usr/bin/env bash
# Ingest benchmark (release, not in CI): verbatim-loadgen against the real
# server over loopback, batches of 100 and 1000, 1-64 clients: events/s, MB/s,
# ack p50/p99/p99.9 and server peak RSS, beside this machine's fdatasync p99
# measured in the same run; then 3x overload, checked afterwards for lost or
# duplicated acknowledged events.
# usage: [EVENTS=300000] [BENCH_DIR=/tmp] tools/bench-ingest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${EVENTS:-300000}"
cargo build --release --bins -q
BIN="${CARGO_TARGET_DIR:-target}/release"
W="$(mktemp -d "${BENCH_DIR:-/tmp}/verbatim-ingest-bench.XXXXXX")"
trap 'rm -rf "$W"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
SERVER_PID=

start_server() {  # start_server DATA [CONFIG]
  local cfg=(); [ -n "${2:-}" ] && cfg=(--config "$2")
  VERBATIM_HTTP_LISTEN="127.0.0.1:$PORT" VERBATIM_LOG=warn "$BIN/verbatim" "${cfg[@]}" --data-dir "$1" serve 2>"$W/server.log" &
  SERVER_PID=$!
  for _ in $(seq 100); do curl -sf "$URL/healthz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "server did not start"; cat "$W/server.log"; exit 1
}
stop_server() { kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; }
rss_mb() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$SERVER_PID/status"; }

echo "machine: $(nproc) cores; $(uptime)"
echo "fdatasync reference (same disk, same run): 4 KiB $(python3 tools/fsync_probe.py "$W" 4096); 256 B $(python3 tools/fsync_probe.py "$W" 256)"
printf '\n%-8s %-8s %10s %8s %9s %9s %9s %8s\n' batch clients events/s MB/s "ack p50" "ack p99" "p99.9" "RSS MB"
for batch in 1000 100; do
  for clients in 1 4 16 64; do
    D="$W/data-$batch-$clients"; rm -rf "$D"
    TOKEN=$("$BIN/verbatim" --data-dir "$D" token create --role ingest --sources 'loadgen-*')
    start_server "$D"
    n=$EVENTS; [ "$batch" = 100 ] && n=$((EVENTS / 3))
    S=$("$BIN/verbatim-loadgen" run --url "$URL" --token "$TOKEN" --clients "$clients" --batch "$batch" --events "$n")
    R=$(rss_mb)
    stop_server
    python3 - "$batch" "$clients" "$R" "$S" <<'PY'
import json, sys
b, c, rss, s = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
a = s["ack_ms"]
print(f"{b:<8} {c:<8} {s['events_per_sec']:>10.0f} {s['mb_per_sec']:>8.1f} {a['p50']:>7.2f}ms {a['p99']:>7.2f}ms {a['p999']:>7.2f}ms {rss:>8}")
PY
  done
done

echo
echo "overload: 64 clients x 1000 events offered as fast as they can, writer queue of 8 batches"
D="$W/data-overload"
TOKEN=$("$BIN/verbatim" --data-dir "$D" token create --role ingest --sources 'loadgen-*')
cat > "$W/overload.toml" <<TOML
[log]
queue_depth = 8
TOML
start_server "$D" "$W/overload.toml"
S=$("$BIN/verbatim-loadgen" run --url "$URL" --token "$TOKEN" --clients 64 --batch 1000 --events "$((EVENTS * 2))" --acks "$W/acks.ndjson")
R=$(rss_mb)
stop_server
"$BIN/verbatim" --data-dir "$D" dump > "$W/archive.ndjson"
C=$("$BIN/verbatim-loadgen" check --acks "$W/acks.ndjson" --archive "$W/archive.ndjson" || true)
echo "load: $S"
echo "server peak RSS: ${R} MB"
echo "check: $C"
