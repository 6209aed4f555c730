#!/usr/bin/env bash
# Interleaved A/B of the moderate-load ack tail (release, not in CI).
#
# One server per variant, all running at once on fresh archives; each round
# runs one 3 s window against every variant in turn, each window between two
# paced fdatasync probes (512 B, same request rate, same disk), as
# tools/bench-ingest.sh does for one server. Sequential runs of that bench
# cannot tell a lever from a change in the disk's mood between runs; here
# every variant sees the same minutes.
#
# usage: [ROUNDS=8] [LOADS="1:1000 10:10000"] [BIN=target/release] \
#        tools/ab-ingest.sh LABEL[@BINDIR][=ENV=VALUE[,ENV=VALUE...]] ...
# e.g.   tools/ab-ingest.sh main 'yield=VERBATIM_X=1'
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,13p' "$0"; exit 2; }
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release}"
ROUNDS="${ROUNDS:-8}"
LOADS="${LOADS:-1:1000 10:10000}"
W="$(mktemp -d "${BENCH_DIR:-/tmp}/verbatim-ab-ingest.XXXXXX")"
PIDS=()
# Ends only what this script started, by PID.
trap 'for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; rm -rf "$W"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

LABELS=() BINS=() ENVS=()
for spec in "$@"; do
  head="${spec%%=*}" envs=""
  [ "$head" != "$spec" ] && envs="${spec#*=}"
  label="${head%%@*}" bin="$BIN"
  [ "$label" != "$head" ] && bin="${head#*@}"
  LABELS+=("$label") BINS+=("$bin") ENVS+=("${envs//,/ }")
done

echo "machine: $(nproc) cores; $(uptime)"
echo "fdatasync reference: 4 KiB $(python3 tools/fsync_probe.py "$W" 4096); 512 B paced at 1,000/s over synced zeros $(python3 tools/fsync_probe.py "$W" 512 1000 2000 overwrite)"
printf '%-6s %-6s %-10s %9s %9s %8s %8s %8s\n' batch round variant "p99 before" "p99 after" "ack p50" "ack p99" "ratio"
for load in $LOADS; do
  batch="${load%%:*}" rate="${load#*:}"
  URLS=() TOKENS=() PIDS=()
  for i in "${!LABELS[@]}"; do
    D="$W/data-$batch-$i"; mkdir -p "$W/lg-$batch-$i"
    TOKENS+=("$("${BINS[$i]}/verbatim" --data-dir "$D" token create --role ingest --sources 'loadgen-*')")
    port=$(free_port)
    # shellcheck disable=SC2086 # ENVS holds NAME=VALUE words
    env ${ENVS[$i]} VERBATIM_HTTP_LISTEN="127.0.0.1:$port" VERBATIM_PG_LISTEN="127.0.0.1:$(free_port)" VERBATIM_LOG=warn \
      "${BINS[$i]}/verbatim" --data-dir "$D" serve 2>"$W/server-$i.log" &
    PIDS+=($!)
    URLS+=("http://127.0.0.1:$port")
    for _ in $(seq 100); do curl -sf "${URLS[$i]}/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -sf "${URLS[$i]}/healthz" >/dev/null || { echo "server ${LABELS[$i]} did not start"; cat "$W/server-$i.log"; exit 1; }
  done
  : > "$W/rounds-$batch"
  for r in $(seq "$ROUNDS"); do
    before=$(python3 tools/fsync_probe.py "$W" 512 "$((rate / batch))")
    order=("${!LABELS[@]}")
    # Every other round runs the variants in reverse, so none always follows the same neighbour.
    [ $((r % 2)) = 0 ] && order=($(printf '%s\n' "${order[@]}" | tac))
    for i in "${order[@]}"; do
      S=$("${BINS[$i]}/verbatim-loadgen" run --url "${URLS[$i]}" --token "${TOKENS[$i]}" --clients 1 --batch "$batch" \
            --rate "$rate" --seconds 3 --state "$W/lg-$batch-$i")
      after=$(python3 tools/fsync_probe.py "$W" 512 "$((rate / batch))")
      printf '%s\t%s\t%s\t%s\t%s\n' "$r" "${LABELS[$i]}" "$before" "$S" "$after" >> "$W/rounds-$batch"
      before=$after
    done
  done
  for p in "${PIDS[@]}"; do kill -TERM "$p"; wait "$p" || true; done; PIDS=()
  python3 - "$batch" "$W/rounds-$batch" <<'PY'
import json, statistics, sys
from collections import defaultdict
batch, path = sys.argv[1], sys.argv[2]
by = defaultdict(list)
for line in open(path):
    r, label, before, s, after = line.rstrip("\n").split("\t")
    b, a, ack = json.loads(before), json.loads(after), json.loads(s)["ack_ms"]
    ratio = ack["p99"] / ((b["p99_ms"] + a["p99_ms"]) / 2)
    by[label].append((int(r), ack["p50"], ack["p99"], ratio))
    print(f"{batch:<6} {r:<6} {label:<10} {b['p99_ms']:>7.3f}ms {a['p99_ms']:>7.3f}ms {ack['p50']:>6.3f}ms {ack['p99']:>6.3f}ms {ratio:>8.2f}")
first = next(iter(by))
for label, rows in by.items():
    line = (f"{batch:<6} {label:<10} ack p50 median {statistics.median(x[1] for x in rows):.3f} ms, "
            f"p99 median {statistics.median(x[2] for x in rows):.3f} ms ({min(x[2] for x in rows):.3f}-{max(x[2] for x in rows):.3f}), "
            f"ratio median {statistics.median(x[3] for x in rows):.2f} (windows <= 2: {sum(x[3] <= 2 for x in rows)} of {len(rows)})")
    if label != first:
        pairs = list(zip(by[first], rows))
        line += f"; p99 under {first}'s in {sum(b[2] < a[2] for a, b in pairs)} of {len(pairs)} rounds"
    print(line)
PY
done
