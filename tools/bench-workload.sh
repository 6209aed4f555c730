#!/usr/bin/env bash
# Prepares the shared benchmark workload (1M real chat events from the
# MIT-licensed chitchat corpus on PyPI) with ../shared/bench/peers/make_workload.py,
# in the same place the peer benchmarks use, and prints the path of the NDJSON.
# usage: [N=1000000] [PEERS_WORKDIR=$TMPDIR/verbatim-peers] tools/bench-workload.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
PEERS="${PEERS:-$HERE/../shared/bench/peers}"
T="${TMPDIR:-$(dirname "$(mktemp -u)")}"
W="${PEERS_WORKDIR:-$T/verbatim-peers}"
N="${N:-1000000}"
PY="${PY:-python3}"
mkdir -p "$W"
if ! [ -f "$W/chitchat/chitchat_dataset/dataset.json" ]; then
  command -v unzip >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unzip >/dev/null; }
  "$PY" -m pip download -q --no-deps chitchat-dataset==0.9.0 -d "$W/dl" >&2
  mkdir -p "$W/chitchat" && unzip -o -q "$W"/dl/chitchat_dataset-0.9.0-py3-none-any.whl -d "$W/chitchat"
fi
if ! [ -f "$W/events.ndjson" ] || [ "$(wc -l < "$W/events.ndjson")" -lt "$N" ]; then
  PEERS_WORKDIR="$W" "$PY" "$PEERS/make_workload.py" -n "$N" >&2
fi
echo "$W/events.ndjson"
