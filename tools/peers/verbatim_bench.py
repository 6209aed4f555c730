#!/usr/bin/env python3
"""Verbatim as one more row of ../shared/bench/peers (see its RESULTS.md).

Durable ingest of the shared workload through POST /v1/events in 1k-event
NDJSON batches (ack after fdatasync), one client like the SQL peers and then 4,
with per-batch latency; bytes on disk per event (log + RocksDB state + index
+ the rollup files the manifest lists, after the server sealed its segments
on SIGTERM). Bodies are prepared before timing.
After the 1-client ingest: how long the index needs to cover the log. Then,
once the server's background work is done (rollups cover the log, their
compaction finished), the 200 queries of queries.txt through GET /v1/search
(newest first, LIMIT 100, bodies and snippets included, each read audited),
one client, 1 warm-up and 3 timed passes, with `verbatim-loadgen query`, and
the two aggregations of the peers (count per network per day, top 20
senders) through POST /v1/sql: hot (1 warm-up, then RUNS runs, median) and
cold (each run a freshly started server, the rollup files evicted from the
page cache first, as the peers' cold runs evict theirs); the time is the HTTP
round trip, including the audit record written before the answer.
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

PEERS = os.environ.get("PEERS_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "bench", "peers")
sys.path.insert(0, PEERS)
from common import WORKDIR, Step, drop_file_cache, emit, median, pct  # noqa: E402

# The peers' two aggregations (duckdb_bench.py, pg_bench.py, sqlite_bench.py)
# over Verbatim's `events` table.
AGGS = [
    ("count per network per day",
     "SELECT network, date_trunc('day', ts) AS day, count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2"),
    ("top 20 senders", "SELECT sender, count(*) AS c FROM events GROUP BY sender ORDER BY c DESC LIMIT 20"),
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def start(bin_dir, data, port):
    env = dict(os.environ, VERBATIM_HTTP_LISTEN=f"127.0.0.1:{port}", VERBATIM_LOG="warn")
    p = subprocess.Popen([os.path.join(bin_dir, "verbatim"), "--data-dir", data, "serve"], env=env)
    for _ in range(300):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise SystemExit("verbatim did not start")


def post_all(port, token, bodies, lat):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"}
    for body in bodies:
        while True:
            t = time.perf_counter()
            c.request("POST", "/v1/events", body=body, headers=headers)
            r = c.getresponse()
            data = r.read()
            if r.status == 200:
                lat.append(time.perf_counter() - t)
                break
            if r.status in (429, 503):
                time.sleep(0.05)
                continue
            raise SystemExit(f"verbatim answered {r.status}: {data[:300]!r}")


def get_json(port, path, token):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    r = c.getresponse()
    return r.status, json.loads(r.read())


def new_auditor(bin_dir, data):
    return subprocess.run([os.path.join(bin_dir, "verbatim"), "--data-dir", data, "token", "create", "--role", "auditor"],
                          check=True, capture_output=True, text=True).stdout.strip()


def sql(port, token, query):
    """POST /v1/sql; returns (seconds, rows)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t = time.perf_counter()
    c.request("POST", "/v1/sql", body=json.dumps({"sql": query}).encode(),
              headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"})
    r = c.getresponse()
    body = r.read()
    dt = time.perf_counter() - t
    if r.status != 200:
        raise SystemExit(f"verbatim SQL answered {r.status}: {body[:300]!r}")
    return dt, json.loads(body)["rows"]


def wait_rollups(port, token, n):
    while True:
        _, st = get_json(port, "/v1/status", token)
        if st["rollups"]["watermark"] >= n:
            return st["rollups"]
        time.sleep(0.1)


def wait_settled(port, token, n, quiet=5.0):
    """Waits until the rollups cover all n events and their files have not
    changed for `quiet` seconds: the last batch's compaction is done, and the
    server's background work no longer competes with the queries (the peers'
    queries, too, run after their loads finished)."""
    wait_rollups(port, token, n)
    last, since = None, time.perf_counter()
    while True:
        _, st = get_json(port, "/v1/status", token)
        seen = (st["rollups"]["files"], st["rollups"]["bytes"])
        if seen != last:
            last, since = seen, time.perf_counter()
        elif time.perf_counter() - since >= quiet:
            return st["rollups"]
        time.sleep(0.25)


def sql_hot(port, auditor, n, runs, quiet=5.0):
    """Each aggregation: 1 warm-up, then `runs` runs on the running server.
    Returns each aggregation's median time."""
    r = wait_settled(port, auditor, n, quiet)
    medians = {}
    print(f"verbatim rollups: cover all {n} events in {r['files']} files, {r['bytes'] / n:.1f} B/event", flush=True)
    for label, query in AGGS:
        with Step(f"verbatim hot {label}") as st:
            _, rows = sql(port, auditor, query)
            times = [sql(port, auditor, query)[0] for _ in range(runs)]
        print(f"verbatim SQL {label} (hot): median {median(times) * 1e3:.1f} ms, {len(rows)} rows", flush=True)
        emit(peer="verbatim", what=f"agg {label} via POST /v1/sql on rollups (hot)", p50_ms=median(times) * 1e3,
             seconds=sum(times), load=st.load, rows=len(rows),
             note=f"{runs} runs after 1 warm-up, median; HTTP round trip incl. audit fsync")
        medians[label] = median(times)
    return medians


def sql_cold(bin_dir, data, n, runs):
    """Each run: a fresh server process, the rollup files evicted, one query.
    Returns each aggregation's median time."""
    auditor = new_auditor(bin_dir, data)
    medians = {}
    for label, query in AGGS:
        times = []
        with Step(f"verbatim cold {label}") as st:
            for _ in range(runs):
                port = free_port()
                server = start(bin_dir, data, port)
                try:
                    wait_rollups(port, auditor, n)
                    # Listed now: a start compacts and deletes what no manifest lists.
                    for root, _, files in os.walk(os.path.join(data, "rollup")):
                        for f in files:
                            try:
                                drop_file_cache(os.path.join(root, f))
                            except FileNotFoundError:
                                pass  # merged away meanwhile
                    times.append(sql(port, auditor, query)[0])
                finally:
                    server.send_signal(signal.SIGTERM)
                    server.wait(timeout=120)
        medians[label] = median(times)
        print(f"verbatim SQL {label} (cold): median {median(times) * 1e3:.1f} ms", flush=True)
        emit(peer="verbatim", what=f"agg {label} via POST /v1/sql on rollups (cold: new server, files evicted)",
             p50_ms=median(times) * 1e3, seconds=sum(times), load=st.load,
             note=f"{runs} runs, median; each a freshly started server")
    return medians


def search_row(bin_dir, data, port, n, ingest_end, clients, runs):
    auditor = new_auditor(bin_dir, data)
    while True:
        _, st = get_json(port, "/v1/status", auditor)
        if st["index"]["watermark"] >= n:
            break
        time.sleep(0.05)
    caught_up = time.perf_counter() - ingest_end
    print(f"verbatim index: covers all {n} events {caught_up:.2f} s after the last ack; docs {st['index']['docs']}, "
          f"consistent {st['index']['consistent']}", flush=True)
    emit(peer="verbatim", what=f"index lag after the {clients}-client ingest (seconds from the last ack to 100% coverage)",
         seconds=caught_up, events=n)
    if clients != 1:
        return auditor
    wait_settled(port, auditor, n)
    queries = os.path.join(PEERS, "queries.txt")
    with Step("verbatim FTS 200q") as stp:
        out = subprocess.run([os.path.join(bin_dir, "verbatim-loadgen"), "query", "--url", f"http://127.0.0.1:{port}",
                              "--token", auditor, "--queries", queries, "--clients", "1", "--passes", "3", "--limit", "100"],
                             check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    print(f"verbatim FTS 200q newest first LIMIT 100 over HTTP with bodies: p50 {r['p50_ms']:.3f} ms p99 {r['p99_ms']:.3f} ms "
          f"(mean {r['mean_ms']:.3f}, {r['hits_per_query']:.1f} hits/query)", flush=True)
    emit(peer="verbatim", what="FTS 200q ORDER BY ts DESC LIMIT 100 via GET /v1/search, bodies + snippets + audit (warm, 1 client)",
         p50_ms=r["p50_ms"], p99_ms=r["p99_ms"], mean_ms=r["mean_ms"], load=stp.load, note="3 timed passes pooled; 1 warm-up",
         per_kind_p50_ms=r["per_kind_p50_ms"], per_kind_p99_ms=r["per_kind_p99_ms"],
         received_p50_ms=r["received_p50_ms"])
    floor_search_row(bin_dir, data, queries)
    sql_hot(port, auditor, n, runs)
    return auditor


def floor_search_row(bin_dir, data, queries):
    """The same 200 queries against `verbatim-loadgen floor`: an HTTP answer
    that waits only for one durable audit record (append + fdatasync on the
    worker that took the request; no token, no search, no bodies). What any
    server that makes each read's audit record durable first pays here."""
    floor_dir = os.path.join(os.path.dirname(data), "verbatim-floor")
    shutil.rmtree(floor_dir, ignore_errors=True)
    floor = subprocess.Popen([os.path.join(bin_dir, "verbatim-loadgen"), "floor", "--dir", floor_dir],
                             stdout=subprocess.PIPE, text=True)
    try:
        port = int(floor.stdout.readline())
        with Step("floor FTS 200q") as stp:
            out = subprocess.run([os.path.join(bin_dir, "verbatim-loadgen"), "query", "--url", f"http://127.0.0.1:{port}",
                                  "--token", "none", "--queries", queries, "--clients", "1", "--passes", "3", "--limit", "100"],
                                 check=True, capture_output=True, text=True).stdout
    finally:
        floor.send_signal(signal.SIGTERM)
        floor.wait(timeout=30)
    shutil.rmtree(floor_dir, ignore_errors=True)
    r = json.loads(out)
    print(f"floor (HTTP answer after one durable audit record, no search): p50 {r['p50_ms']:.3f} ms p99 {r['p99_ms']:.3f} ms", flush=True)
    emit(peer="floor", what="the 200 queries' requests answered empty after one append + fdatasync each (warm, 1 client)",
         p50_ms=r["p50_ms"], p99_ms=r["p99_ms"], mean_ms=r["mean_ms"], load=stp.load, note="3 timed passes pooled; 1 warm-up")


def run(bin_dir, lines, batch, clients, runs):
    n = len(lines)
    bodies = [b"".join(lines[i:i + batch]) for i in range(0, n, batch)]
    data = os.path.join(WORKDIR, "verbatim-data")
    shutil.rmtree(data, ignore_errors=True)
    token = subprocess.run([os.path.join(bin_dir, "verbatim"), "--data-dir", data, "token", "create", "--role", "ingest", "--sources", "*"],
                           check=True, capture_output=True, text=True).stdout.strip()
    port = free_port()
    server = start(bin_dir, data, port)
    lat = []
    try:
        with Step(f"verbatim ingest {batch}-event batches, {clients} client(s)") as st:
            threads = [threading.Thread(target=post_all, args=(port, token, bodies[k::clients], lat)) for k in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        ingest_end = time.perf_counter()
        auditor = search_row(bin_dir, data, port, n, ingest_end, clients, runs)
        wait_rollups(port, auditor, n)  # bytes on disk below include the rollups
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    if clients == 1:
        sql_cold(bin_dir, data, n, runs)
    log_b, state_b = dir_bytes(os.path.join(data, "log")), dir_bytes(os.path.join(data, "state"))
    # The rollups the manifest lists: files merged away wait out
    # rollup.keep_compacted_ms before they are deleted (or the next start).
    with open(os.path.join(data, "rollup", "MANIFEST"), "rb") as f:
        manifest = f.read()
    rollup_b = len(manifest) + sum(e["bytes"] for e in json.loads(manifest)["files"])
    index_b = dir_bytes(os.path.join(data, "index"))
    size = log_b + state_b + index_b + rollup_b
    print(f"verbatim ingest x{clients}: {n / st.seconds:.0f} ev/s in {st.seconds:.1f}s, batch p50 {pct(lat, 50) * 1e3:.1f} ms "
          f"p99 {pct(lat, 99) * 1e3:.1f} ms; {size / n:.1f} B/event (log {log_b / n:.1f}, state {state_b / n:.1f}, "
          f"index {index_b / n:.1f}, rollups {rollup_b / n:.1f})", flush=True)
    emit(peer="verbatim", what=f"ingest {batch}-event batches over HTTP, {clients} client(s), ack after fdatasync",
         events_s=n / st.seconds, seconds=st.seconds, bytes_event=size / n, p50_ms=pct(lat, 50) * 1e3, p99_ms=pct(lat, 99) * 1e3,
         load=st.load, machine_busy=st.machine_busy, machine_steal=st.machine_steal,
         breakdown={"log": round(log_b / n, 1), "state": round(state_b / n, 1), "index": round(index_b / n, 1),
                    "rollups": round(rollup_b / n, 1)}, events=n,
         note="p50/p99 = per 1k-event batch latency (HTTP round trip)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="directory with the release verbatim binary")
    ap.add_argument("--events", default=os.path.join(WORKDIR, "events.ndjson"))
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each SQL aggregation")
    a = ap.parse_args()
    t = time.perf_counter()
    with open(a.events, "rb") as f:
        lines = f.readlines()
    print(f"prepared {len(lines)} events in {time.perf_counter() - t:.1f}s (not counted)", flush=True)
    for clients in (1, 4):
        run(a.bin, lines, a.batch, clients, a.runs)


if __name__ == "__main__":
    main()
