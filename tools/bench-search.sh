#!/usr/bin/env bash
# Search benchmarks (release, not in CI), each beside a reference measured in
# the same run:
#  1. indexing throughput, Verbatim's indexer path vs bare tantivy on the same
#     1M shared events (benches/index.rs);
#  2. time to searchable: ack -> first hit of probe events carrying a unique
#     word, while loadgen offers 50 % of the maximum ingest rate measured just before;
#  3. search latency over N10 (default 10M) loadgen events: 1000 mixed queries
#     (word / AND / phrase) through GET /v1/search with bodies, hot with 1 and
#     4 clients, cold (page cache dropped for the data directory, server
#     restarted) with 1 client, then tantivy alone on the same index
#     (in process, no HTTP, no bodies, no audit); index bytes per event.
# usage: [N10=10000000] [BENCH_DIR=/tmp] tools/bench-search.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N10="${N10:-10000000}"
cargo build --release --bins -q
BIN="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)"
W="$(mktemp -d "${BENCH_DIR:-/tmp}/verbatim-search-bench.XXXXXX")"
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
LG="$BIN/verbatim-loadgen"

start_server() {  # start_server DATA
  VERBATIM_HTTP_LISTEN="127.0.0.1:$PORT" VERBATIM_LOG=warn "$BIN/verbatim" --data-dir "$1" serve 2>>"$W/server.log" &
  SERVER_PID=$!
  for _ in $(seq 300); do curl -sf "$URL/healthz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "server did not start"; cat "$W/server.log"; exit 1
}
stop_server() { kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])$2)" "$1"; }
wait_indexed() {  # wait_indexed TOKEN: seconds until the index covers the log
  local t0; t0=$(date +%s.%N)
  while true; do
    S=$(curl -sf -H "Authorization: Bearer $1" "$URL/v1/status")
    [ "$(field "$S" '["index"]["lag_events"]')" = 0 ] && break
    sleep 0.2
  done
  python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)"
}

echo "machine: $(nproc) cores; $(uptime)"
echo
echo "== 1. indexing, 1M shared events"
EV=$(tools/bench-workload.sh)
[ "${SKIP_INDEXING:-0}" = 1 ] || cargo bench -q --bench index -- --events "$EV" --n 1000000 --passes 2 --dir "$W" 2>/dev/null | grep -v '^$'

echo
echo "== 2. time to searchable at 50 % of maximum ingest"
D="$W/data-probe"
TOKEN=$("$BIN/verbatim" --data-dir "$D" token create --role ingest --sources 'loadgen-*')
AUDITOR=$("$BIN/verbatim" --data-dir "$D" token create --role auditor)
start_server "$D"
mkdir -p "$W/lg-state"
MAX=$("$LG" run --url "$URL" --token "$TOKEN" --clients 4 --batch 1000 --seconds 10 --state "$W/lg-state")
RATE=$(field "$MAX" '["events_per_sec"]' | cut -d. -f1)
echo "maximum ingest (4 clients x 1000): $RATE events/s; offering $((RATE / 2))"
"$LG" run --url "$URL" --token "$TOKEN" --clients 4 --batch 1000 --rate $((RATE / 2)) --seconds 45 --state "$W/lg-state" > "$W/half.json" &
LOAD_PID=$!
sleep 3
PROBE=$("$LG" probe --url "$URL" --ingest-token "$TOKEN" --token "$AUDITOR" --probes 100 --interval-ms 250)
wait "$LOAD_PID"
echo "load while probing: $(field "$(cat "$W/half.json")" '["events_per_sec"]') events/s"
echo "RESULT time to searchable (commit interval 1 s): $PROBE"
stop_server
rm -rf "$D"

echo
echo "== 3. search latency on $N10 events"
D="$W/data-10m"
TOKEN=$("$BIN/verbatim" --data-dir "$D" token create --role ingest --sources 'loadgen-*')
AUDITOR=$("$BIN/verbatim" --data-dir "$D" token create --role auditor)
start_server "$D"
S=$("$LG" run --url "$URL" --token "$TOKEN" --clients 4 --batch 1000 --events "$N10" --seed 3)
echo "ingest: $(field "$S" '["events_per_sec"]') events/s; index caught up $(wait_indexed "$AUDITOR") s after the last ack"
# 1000 mixed queries from the generator's own vocabulary: 50 % words, 25 % AND, 25 % phrases.
"$LG" gen --events 20000 --seed 3 | python3 -c '
import json, random, re, sys
random.seed(7)
bodies = [json.loads(l).get("body", "") for l in sys.stdin]
out = []
while len(out) < 1000:
    ws = re.findall(r"[a-z]+", random.choice(bodies).lower())
    if len(ws) < 2: continue
    r = random.random()
    if r < 0.5: out.append("word\t" + random.choice(ws))
    elif r < 0.75: out.append("and\t" + " ".join(random.sample(ws, 2)))
    else:
        i = random.randrange(len(ws) - 1); out.append("phrase\t" + ws[i] + " " + ws[i + 1])
print("\n".join(out))' > "$W/queries.txt"
for c in 1 4; do
  echo "RESULT HTTP hot, $c client(s): $("$LG" query --url "$URL" --token "$AUDITOR" --queries "$W/queries.txt" --clients "$c" --passes 3)"
done
stop_server
python3 - "$D" <<'PY'
import os, sys
for root, _, files in os.walk(sys.argv[1]):
    for f in files:
        fd = os.open(os.path.join(root, f), os.O_RDONLY)
        try:
            os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
PY
start_server "$D"
echo "RESULT HTTP cold (page cache dropped, server restarted), 1 client, first pass: $("$LG" query --url "$URL" --token "$AUDITOR" --queries "$W/queries.txt" --clients 1 --passes 1 --cold)"
stop_server
cargo bench -q --bench index -- --search "$D/index" --queries "$W/queries.txt" --passes 3 2>/dev/null | grep -v '^$'
du -sb "$D/log" "$D/state" "$D/index" "$D/audit" | awk -v n="$N10" '{printf "%-40s %8.1f B/event\n", $2, $1 / n}'
