#!/usr/bin/env bash
# Ingest benchmark (release, not in CI): verbatim-loadgen against the real
# server over loopback, batches of 100 and 1000, 1-64 clients: events/s, MB/s,
# ack p50/p99/p99.9 and server peak RSS, beside this machine's fdatasync p99
# measured in the same run; then 3x overload, checked afterwards for lost or
# duplicated acknowledged events.
# usage: [EVENTS=300000] [ROUNDS=8] [ONLY_MODERATE=1] [BENCH_DIR=/tmp] tools/bench-ingest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${EVENTS:-300000}"
cargo build --release --bins -q
BIN="${CARGO_TARGET_DIR:-target}/release"
W="$(mktemp -d "${BENCH_DIR:-/tmp}/verbatim-ingest-bench.XXXXXX")"
SERVER_PID= FLOOR_PID= FLOORW_PID=
# Ends only what this script started, by PID.
trap 'for p in $SERVER_PID $FLOOR_PID $FLOORW_PID; do kill -TERM "$p" 2>/dev/null || true; done; rm -rf "$W"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"

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
# The log writes its blocks over zeros reserved ahead of them (ADR 0013); the
# ratios below are to appends, the dearer sync. This shows the other kind.
echo "overwrite of synced zeros + fdatasync, 512 B paced at 1,000/s: $(python3 tools/fsync_probe.py "$W" 512 1000 2000 overwrite)"

# Moderate load: one client, paced well below the maximum. This disk's
# fdatasync latency comes in episodes: bursts of tens of syncs at 3-4 times
# the usual time, about once a second in some minutes and not at all in
# others, so a 2,000-sync p99 flips between two values from one window to
# the next. Each window of ingest is therefore bracketed by two references
# at the same request rate (paced: the disk is idle between syncs, as it is
# for the server), a probe just before it and one just after, and the
# ratio is taken to their mean p99. Nothing else syncs during the window: a
# probe running beside the server is another writer on the same disk, and
# it raised the server's ack p99 from 0.6-1.1 ms to 1.1-3.2 ms when it was
# tried (docs/benchmarks.md, 2026-12-04).
ROUNDS="${ROUNDS:-8}"
# Beside each Verbatim window runs one of the floor (`verbatim-loadgen floor`:
# the body appended and fdatasynced on the worker that took the request,
# nothing else) at the same load, so the ratio Verbatim reaches can be read
# against the ratio no server on this machine can beat, and one of the floor
# with a writer thread (`--writer-thread`: the hand-offs of Verbatim's ack
# path and nothing else of it). The windows alternate: probe, Verbatim,
# probe, floor, probe, floor+writer, probe; each is set against the probes
# on either side of it.
echo
echo "moderate load: 1 client, paced; $ROUNDS rounds of 3 s windows, Verbatim, the floor and the floor with a writer thread alternating between paced fdatasync probes (512 B) at the same request rate"
printf '%-8s %-9s %-12s %-6s %9s %9s %9s %9s %9s %9s %8s\n' batch events/s server round "p50 before" "p99 before" "p99 after" "ack p50" "ack p99" "p99.9" "÷sync p99"
for spec in "1 1000" "10 10000"; do
  read -r batch rate <<<"$spec"
  D="$W/data-paced-$batch"; rm -rf "$D" "$W/lg-$batch" "$W/lgf-$batch" "$W/lgw-$batch"; mkdir -p "$W/lg-$batch" "$W/lgf-$batch" "$W/lgw-$batch"
  TOKEN=$("$BIN/verbatim" --data-dir "$D" token create --role ingest --sources 'loadgen-*')
  start_server "$D"
  rm -f "$W/floor.port" "$W/floorw.port"
  "$BIN/verbatim-loadgen" floor --dir "$D/floor" > "$W/floor.port" 2>"$W/floor.log" &
  FLOOR_PID=$!
  "$BIN/verbatim-loadgen" floor --writer-thread --dir "$D/floorw" > "$W/floorw.port" 2>"$W/floorw.log" &
  FLOORW_PID=$!
  for _ in $(seq 100); do [ -s "$W/floor.port" ] && [ -s "$W/floorw.port" ] && break; sleep 0.1; done
  FLOOR_URL="http://127.0.0.1:$(head -1 "$W/floor.port")"
  FLOORW_URL="http://127.0.0.1:$(head -1 "$W/floorw.port")"
  : > "$W/rounds-$batch"
  for r in $(seq "$ROUNDS"); do
    F=$(python3 tools/fsync_probe.py "$D" 512 "$((rate / batch))")
    S=$("$BIN/verbatim-loadgen" run --url "$URL" --token "$TOKEN" --clients 1 --batch "$batch" --rate "$rate" --seconds 3 --state "$W/lg-$batch")
    G=$(python3 tools/fsync_probe.py "$D" 512 "$((rate / batch))")
    T=$("$BIN/verbatim-loadgen" run --url "$FLOOR_URL" --token none --clients 1 --batch "$batch" --rate "$rate" --seconds 3 --state "$W/lgf-$batch")
    H=$(python3 tools/fsync_probe.py "$D" 512 "$((rate / batch))")
    U=$("$BIN/verbatim-loadgen" run --url "$FLOORW_URL" --token none --clients 1 --batch "$batch" --rate "$rate" --seconds 3 --state "$W/lgw-$batch")
    I=$(python3 tools/fsync_probe.py "$D" 512 "$((rate / batch))")
    printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$r" "$F" "$S" "$G" "$T" "$H" "$U" "$I" >> "$W/rounds-$batch"
  done
  kill -TERM "$FLOOR_PID" "$FLOORW_PID"; wait "$FLOOR_PID" "$FLOORW_PID" || true; FLOOR_PID= FLOORW_PID=
  stop_server
  python3 - "$batch" "$rate" "$W/rounds-$batch" <<'PY'
import json, statistics, sys
batch, rate, path = sys.argv[1], sys.argv[2], sys.argv[3]
ratios = {"verbatim": [], "floor": [], "floor+writer": []}
for line in open(path):
    r, f, s, g, t, h, u, i = line.rstrip("\n").split("\t")
    f, g, h, i = json.loads(f), json.loads(g), json.loads(h), json.loads(i)
    for name, window, before, after in (("verbatim", s, f, g), ("floor", t, g, h), ("floor+writer", u, h, i)):
        a = json.loads(window)["ack_ms"]
        ratios[name].append(a["p99"] / ((before["p99_ms"] + after["p99_ms"]) / 2))
        print(f"{batch:<8} {rate:<9} {name:<12} {r:<6} {before['p50_ms']:>7.3f}ms {before['p99_ms']:>8.3f}ms {after['p99_ms']:>8.3f}ms "
              f"{a['p50']:>7.3f}ms {a['p99']:>7.3f}ms {a['p999']:>7.3f}ms {ratios[name][-1]:>8.2f}")
for name, rs in ratios.items():
    print(f"{batch:<8} {rate:<9} {name:<12} median ack p99 ÷ the mean sync p99 of the probes before and after, over {len(rs)} windows: "
          f"{statistics.median(rs):.2f} (windows at or under 2: {sum(x <= 2 for x in rs)})")
PY
done
[ "${ONLY_MODERATE:-0}" = 1 ] && exit 0
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
