#!/usr/bin/env bash
# Runs the log append benchmark (release build) on the shared 1M-event workload.
# usage: tools/bench-log.sh [extra args for benches/log_append.rs, e.g. --rate-secs 30]
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="$(tools/bench-workload.sh)"
cargo bench --bench log_append -- --events "$EVENTS" --dir "${BENCH_DIR:-$(pwd)/target}" "$@"
