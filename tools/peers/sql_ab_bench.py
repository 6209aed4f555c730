#!/usr/bin/env python3
"""The peers' two SQL aggregations through two Verbatim binaries, on one
archive of the shared workload, in alternating rounds: an A/B of a change to
the SQL path, with the noise of the machine spread over both sides.

The archive is made once (`verbatim import` of the peers' events.ndjson,
then a server run until its rollups cover the log and have settled). Each
round starts each binary's server on it in turn and times every
aggregation hot (1 warm-up, then --runs runs, median) and cold (--cold runs,
each a fresh server with the rollup files evicted from the page cache), as
tools/peers/verbatim_bench.py does. DuckDB's own figures for the same two
queries come from ../shared/bench/peers/duckdb_bench.py, run beside this by
tools/bench-sql-ab.sh.

usage: sql_ab_bench.py --a DIR --b DIR [--rounds 3] [--runs 15] [--cold 5]
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verbatim_bench import AGGS, free_port, new_auditor, sql_cold, sql_hot, start, wait_settled  # noqa: E402
from common import WORKDIR, emit, median  # noqa: E402


def make_archive(bin_dir, events, data):
    if os.path.exists(os.path.join(data, "ready")):
        return
    shutil.rmtree(data, ignore_errors=True)
    subprocess.run([os.path.join(bin_dir, "verbatim"), "--data-dir", data, "import", events], check=True,
                   stdout=subprocess.DEVNULL)
    n = sum(1 for _ in open(events, "rb"))
    port = free_port()
    server = start(bin_dir, data, port)
    try:
        r = wait_settled(port, new_auditor(bin_dir, data), n)
        print(f"archive: {n} events in {r['files']} rollup files, {r['bytes'] / n:.1f} B/event", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    open(os.path.join(data, "ready"), "w").close()


def hot(bin_dir, data, n, runs):
    """A fresh server; each aggregation's median hot time."""
    auditor = new_auditor(bin_dir, data)
    port = free_port()
    server = start(bin_dir, data, port)
    try:
        return sql_hot(port, auditor, n, runs, quiet=2.0)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="directory of the first (reference) release binaries")
    ap.add_argument("--b", required=True, help="directory of the second release binaries")
    ap.add_argument("--events", default=os.path.join(WORKDIR, "events.ndjson"))
    ap.add_argument("--data", default=os.path.join(WORKDIR, "verbatim-ab-data"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--cold", type=int, default=5)
    a = ap.parse_args()
    make_archive(a.a, a.events, a.data)
    n = sum(1 for _ in open(a.events, "rb"))
    results = {side: {label: {"hot": [], "cold": []} for label, _ in AGGS} for side in ("a", "b")}
    for r in range(a.rounds):
        for side, bin_dir in (("a", a.a), ("b", a.b)):
            for label, t in hot(bin_dir, a.data, n, a.runs).items():
                results[side][label]["hot"].append(t)
            for label, t in sql_cold(bin_dir, a.data, n, a.cold).items():
                results[side][label]["cold"].append(t)
            print(f"round {r + 1} {side}: " + "; ".join(
                f"{label} hot {results[side][label]['hot'][-1] * 1e3:.1f} / cold {results[side][label]['cold'][-1] * 1e3:.1f} ms"
                for label, _ in AGGS), flush=True)
    for label, _ in AGGS:
        for side in ("a", "b"):
            h, c = results[side][label]["hot"], results[side][label]["cold"]
            print(f"{side} {label}: hot {min(h) * 1e3:.1f}-{max(h) * 1e3:.1f} ms (median of rounds "
                  f"{median(h) * 1e3:.1f}), cold {min(c) * 1e3:.1f}-{max(c) * 1e3:.1f} ms (median {median(c) * 1e3:.1f})")
            emit(peer=f"verbatim-{side}", what=f"agg {label} via POST /v1/sql", hot_p50_ms=median(h) * 1e3,
                 cold_p50_ms=median(c) * 1e3, hot_rounds_ms=[round(x * 1e3, 2) for x in h],
                 cold_rounds_ms=[round(x * 1e3, 2) for x in c])


if __name__ == "__main__":
    main()
