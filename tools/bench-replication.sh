#!/usr/bin/env bash
# Replication benchmark (release, not in CI). A regional site ingests EVENTS
# loadgen events (1M by default) while HQ is offline; then HQ starts and the
# site catches up. Prints, from the same run:
#   - the site's ingest rate (events/s, MB/s of wire JSON);
#   - the catch-up rate: events/s and MB/s of stored blocks, from HQ's start
#     until HQ holds the whole log (HQ checks, appends, fsyncs, seals);
#   - the time until HQ's index and rollups of the site cover the replica
#     (HQ derives the global view while shipments land);
#   - a plain copy of the same segment files over loopback TCP with a write
#     and fdatasync per file (tools/copy_probe.py), the ceiling for shipping.
# Goal (issue 7): catch-up >= 1.5 x the ingest rate, so the lag always shrinks.
# usage: [EVENTS=1000000] [BENCH_DIR=/tmp] tools/bench-replication.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${EVENTS:-1000000}"
cargo build --release --bins -q
BIN="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)"
W="$(mktemp -d "${BENCH_DIR:-/tmp}/verbatim-replication-bench.XXXXXX")"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HQ_PORT=$(port); SITE_PORT=$(port)
HQ="$W/hq"; SITE="$W/site"
REPLICA=$("$BIN/verbatim" --data-dir "$HQ" token create --role replica --site nyc)
HQ_ADMIN=$("$BIN/verbatim" --data-dir "$HQ" token create --role admin)
INGEST=$("$BIN/verbatim" --data-dir "$SITE" token create --role ingest --sources 'loadgen-*')
ADMIN=$("$BIN/verbatim" --data-dir "$SITE" token create --role admin)
# The shipper retries every 0.5 s at most, so the catch-up clock measures
# shipping, not the default backoff (up to 30 s) after a long outage.
printf '[replication]\nbackoff_max_ms = 500\n' > "$W/site.toml"
wait_healthy() { for _ in $(seq 300); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return; sleep 0.1; done; echo "server on $1 did not start"; exit 1; }
status() { curl -sf -H "Authorization: Bearer $ADMIN" "http://127.0.0.1:$SITE_PORT/v1/status" || echo '{}'; }

echo "machine: $(nproc) cores; $(uptime)"
VERBATIM_SITE_ID=nyc VERBATIM_SITE_ROLE=regional VERBATIM_HQ_URL="http://127.0.0.1:$HQ_PORT" \
  VERBATIM_HQ_TOKEN="$REPLICA" VERBATIM_HTTP_LISTEN="127.0.0.1:$SITE_PORT" VERBATIM_PG_LISTEN="127.0.0.1:$(port)" \
  VERBATIM_LOG=error "$BIN/verbatim" --config "$W/site.toml" --data-dir "$SITE" serve 2>"$W/site.log" &
PIDS+=($!)
wait_healthy "$SITE_PORT"
echo "HQ offline; the site ingests $EVENTS events (4 clients, 1000-event batches)"
INGESTED=$("$BIN/verbatim-loadgen" run --url "http://127.0.0.1:$SITE_PORT" --token "$INGEST" --clients 4 --batch 1000 --events "$EVENTS")
BACKLOG=$(status)

T0=$(date +%s.%N)
VERBATIM_SITE_ROLE=hq VERBATIM_HTTP_LISTEN="127.0.0.1:$HQ_PORT" VERBATIM_PG_LISTEN="127.0.0.1:$(port)" \
  VERBATIM_LOG=error "$BIN/verbatim" --data-dir "$HQ" serve 2>"$W/hq.log" &
PIDS+=($!)
while :; do
  S=$(status)
  if python3 -c '
import json, sys
s = json.loads(sys.argv[1])
sh = s.get("shipping") or {}
sys.exit(0 if sh.get("lag_events") == 0 and sh.get("cursor") == s["log"]["head"] else 1)' "$S"; then break; fi
  sleep 0.05
done
T1=$(date +%s.%N)
DONE=$(status)
# HQ indexes and rolls the replica up while it arrives (the global view);
# the second clock runs until both cover the whole replica.
HEAD=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["log"]["head"])' "$DONE")
while :; do
  H=$(curl -sf -H "Authorization: Bearer $HQ_ADMIN" "http://127.0.0.1:$HQ_PORT/v1/status" || echo '{}')
  if python3 -c '
import json, sys
r = (json.loads(sys.argv[1]).get("replicas") or [{}])[0]
h = int(sys.argv[2])
sys.exit(0 if (r.get("index") or {}).get("watermark") == h and (r.get("rollups") or {}).get("watermark") == h else 1)' "$H" "$HEAD"; then break; fi
  sleep 0.1
done
T2=$(date +%s.%N)

# The same segment files, plain-copied over loopback (the site's log is
# quiet now; the active segment is copied as it stands).
COPY=$(python3 tools/copy_probe.py "$W/copy" "$SITE"/log/*.seg*)

python3 - "$INGESTED" "$BACKLOG" "$DONE" "$T0" "$T1" "$COPY" "$T2" <<'PY'
import json, sys
ing, backlog, done = (json.loads(a) for a in sys.argv[1:4])
t0, t1, copy = float(sys.argv[4]), float(sys.argv[5]), json.loads(sys.argv[6])
t2 = float(sys.argv[7])
secs = t1 - t0
events = backlog["shipping"]["lag_events"]
stored = backlog["shipping"]["lag_bytes"]
ev_rate, mb_rate = events / secs, stored / secs / 1e6
print(f"\nsite ingest:   {ing['events_per_sec']:>10.0f} events/s  {ing['mb_per_sec']:>7.1f} MB/s wire JSON   ({ing['events_acked']} events in {ing['seconds']:.1f} s)")
print(f"backlog:       {events:>10} events  {stored/1e6:>9.1f} MB stored at HQ's start")
print(f"catch-up:      {ev_rate:>10.0f} events/s  {mb_rate:>7.1f} MB/s stored   ({secs:.1f} s from HQ's start, {done['shipping']['shipments']} shipments)")
print(f"HQ searchable: {events / (t2 - t0):>10.0f} events/s                      ({t2 - t0:.1f} s from HQ's start until its index and rollups of the site cover the replica)")
print(f"plain copy:    {'':>10}           {copy['mb_per_sec']:>7.1f} MB/s           ({copy['bytes']/1e6:.1f} MB in {copy['seconds']:.2f} s, write + fdatasync per file)")
print(f"\ncatch-up ÷ ingest (events/s): {ev_rate / ing['events_per_sec']:.2f}   goal ≥ 1.5")
print(f"catch-up ÷ plain copy (MB/s): {mb_rate / copy['mb_per_sec']:.2f}")
PY
