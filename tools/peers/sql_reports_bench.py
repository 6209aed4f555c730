#!/usr/bin/env python3
"""The report queries of query/reports/ over an archive's rollups, hot and
cold, beside DuckDB and standalone DataFusion (the `datafusion` Python
package, the same DataFusion major version as the server) on the same
Parquet files, in one run. Run with a Python that has duckdb and datafusion
(tools/bench-sql.sh makes that venv).

- verbatim: GET /v1/reports/NAME?from=&to= over HTTP (JSON), so the figure
  includes planning over the manifest, the HTTP round trip and the audit
  record fsynced before the answer.
  hot  = 1 warm-up, then RUNS runs, median;
  cold = RUNS runs, each on a freshly started server with the rollup files
         evicted from the page cache (posix_fadvise DONTNEED) just before.
- datafusion / duckdb: the same files (the manifest's list), 2 threads
  (this machine's cores, the server's [sql] threads); hot as above in one
  process, cold = a fresh process per run after the same eviction, the
  query alone timed inside it (as ../shared/bench/peers/duckdb_bench.py).
The three answers are compared (row count and the sum of every integer
cell); a mismatch stops the run.
"""
import argparse
import glob
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPORTS = os.path.join(HERE, "..", "..", "query", "reports")
sys.path.insert(0, HERE)
from verbatim_bench import free_port, new_auditor, start  # noqa: E402

COLUMNS = ('"offset", ts, ts_utc_offset_secs, received_at, site, source, seq, network, kind, sender, '
           'recipients, channel, conversation_id, direction, body_len, flags, attrs')

# DuckDB's dialect differs from DataFusion's in two places the reports use:
# casting a timestamp to an integer, and `/` on integers (DuckDB: a double).
DUCKDB_EDITS = {
    "off_hours": [
        ("CAST(ts AS BIGINT) / 1000000000", "epoch_ns(ts) // 1000000000"),
        ("% 86400 / 3600", "% 86400 // 3600"),
        ("(local_secs / 86400)", "(local_secs // 86400)"),
    ],
}


def nanos(s):
    from datetime import datetime, timezone
    d = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return int(d.timestamp()) * 1_000_000_000


def report_sql(name, engine, frm, to):
    with open(os.path.join(REPORTS, name + ".sql")) as f:
        sql = f.read()
    if engine == "duckdb":
        for old, new in DUCKDB_EDITS.get(name, []):
            if old not in sql:
                raise SystemExit(f"{name}.sql changed: no `{old}` to translate for DuckDB")
            sql = sql.replace(old, new)
        lit = lambda n: f"to_timestamp({n // 1_000_000_000})"  # noqa: E731  (whole seconds)
    else:
        lit = lambda n: f"arrow_cast({n}, 'Timestamp(Nanosecond, Some(\"UTC\"))')"  # noqa: E731
    return sql.replace("{{from}}", lit(frm)).replace("{{to}}", lit(to))


def manifest_files(data):
    with open(os.path.join(data, "rollup", "MANIFEST")) as f:
        m = json.load(f)
    return m, [os.path.join(data, "rollup", e["path"]) for e in m["files"]]


def evict(files):
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def digest(rows):
    """(rows, sum of integer cells): enough to catch two engines answering differently."""
    total = 0
    for r in rows:
        for v in r:
            if isinstance(v, int) and not isinstance(v, bool):
                total += v
    return len(rows), total


# --- the reference engines, in this process or a child -------------------------

def engine_connect(engine, data):
    _, files = manifest_files(data)
    if engine == "duckdb":
        import duckdb
        c = duckdb.connect()
        c.execute("SET TimeZone = 'UTC'")
        c.execute("SET threads = 2")
        # DuckDB reads nanosecond timestamps as TIMESTAMPTZ_NS, which few of
        # its functions take: the view casts them to its native microseconds.
        cols = COLUMNS.replace("ts, ", "CAST(ts AS TIMESTAMPTZ) AS ts, ", 1).replace(
            "received_at", "CAST(received_at AS TIMESTAMPTZ) AS received_at")
        c.execute(f"CREATE VIEW events AS SELECT {cols} FROM read_parquet({files!r}, hive_partitioning = false)")
        return lambda sql: c.execute(sql).fetchall()
    from datafusion import SessionConfig, SessionContext
    ctx = SessionContext(SessionConfig().with_target_partitions(2))
    # Exactly the manifest's files (a compacted run lives under days=A..B/,
    # and merged files wait a while before they are deleted): one directory
    # of links to them.
    flat = os.path.join(data, "..", "datafusion-files")
    shutil.rmtree(flat, ignore_errors=True)
    os.makedirs(flat)
    for i, p in enumerate(files):
        os.symlink(os.path.abspath(p), os.path.join(flat, f"{i:05}.parquet"))
    ctx.register_listing_table("events_files", flat + "/", file_extension=".parquet")
    ctx.sql(f"CREATE VIEW events AS SELECT {COLUMNS} FROM events_files").collect()
    return lambda sql: [tuple(r.values()) for b in ctx.sql(sql).collect() for r in b.to_pylist()]


def child(a):
    q = engine_connect(a.child, a.data)
    sql = report_sql(a.report, a.child, a.frm, a.to)
    t = time.perf_counter()
    rows = q(sql)
    print(json.dumps({"s": time.perf_counter() - t, "digest": digest(rows)}))


def engine_hot(engine, data, names, frm, to, runs):
    q = engine_connect(engine, data)
    out = {}
    for name in names:
        sql = report_sql(name, engine, frm, to)
        d = digest(q(sql))
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            q(sql)
            times.append(time.perf_counter() - t)
        out[name] = (statistics.median(times), d)
    return out


def engine_cold(engine, data, name, frm, to, runs, files):
    times = []
    for _ in range(runs):
        evict(files)
        r = subprocess.run([sys.executable, __file__, "--child", engine, "--report", name, "--data", data,
                            "--from-nanos", str(frm), "--to-nanos", str(to)], check=True, capture_output=True, text=True)
        times.append(json.loads(r.stdout.strip().splitlines()[-1])["s"])
    return statistics.median(times)


# --- the server -------------------------------------------------------------------

def get(port, token, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    t = time.perf_counter()
    c.request("GET", path, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    r = c.getresponse()
    body = r.read()
    dt = time.perf_counter() - t
    if r.status != 200:
        raise SystemExit(f"verbatim answered {r.status} to {path}: {body[:300]!r}")
    return dt, json.loads(body)


def caught_up(port, token):
    """Waits until the rollups and the index cover the log (nothing else runs)."""
    while True:
        _, st = get(port, token, "/v1/status")
        head = st["log"]["head"]
        if st["rollups"]["watermark"] >= head and st["index"]["watermark"] >= head:
            return st
        time.sleep(0.5)


def report_path(name, frm, to):
    return f"/v1/reports/{name}?" + urllib.parse.urlencode({"from": frm, "to": to})


def verbatim_run(bin_dir, data, names, frm, to, runs):
    auditor = new_auditor(bin_dir, data)
    port = free_port()
    server = start(bin_dir, data, port)
    hot = {}
    try:
        st = caught_up(port, auditor)
        for name in names:
            _, ans = get(port, auditor, report_path(name, frm, to))
            d = digest(ans["rows"])
            times = [get(port, auditor, report_path(name, frm, to))[0] for _ in range(runs)]
            hot[name] = (statistics.median(times), d)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=300)
    _, files = manifest_files(data)
    cold = {}
    for name in names:
        times = []
        for _ in range(runs):
            port = free_port()
            server = start(bin_dir, data, port)
            try:
                caught_up(port, auditor)
                evict(files)
                times.append(get(port, auditor, report_path(name, frm, to))[0])
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=300)
        cold[name] = statistics.median(times)
    return st, hot, cold


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", help="directory with the release verbatim binary")
    ap.add_argument("--data", required=True, help="the archive's data directory (server stopped)")
    ap.add_argument("--from", dest="frm", default="2020-01-01")
    ap.add_argument("--to", default="2030-01-01")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--child", choices=["duckdb", "datafusion"])
    ap.add_argument("--report")
    ap.add_argument("--from-nanos", type=int)
    ap.add_argument("--to-nanos", type=int)
    a = ap.parse_args()
    if a.child:
        a.frm, a.to = a.from_nanos, a.to_nanos
        return child(a)
    frm, to = nanos(a.frm), nanos(a.to)
    names = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(REPORTS, "*.sql")))
    import datafusion
    import duckdb
    print(f"engines: verbatim (release, DataFusion 55 inside), datafusion-python {datafusion.__version__}, "
          f"duckdb {duckdb.__version__}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}", flush=True)
    st, v_hot, v_cold = verbatim_run(a.bin, a.data, names, frm, to, a.runs)
    m, files = manifest_files(a.data)
    n = st["log"]["head"]
    parquet = sum(os.path.getsize(p) for p in files)
    print(f"archive: {n:,} events; rollups {len(files)} Parquet files, {parquet:,} B = {parquet / n:.1f} B/event "
          f"(no bodies; ADR 0005)", flush=True)
    refs = {}
    for engine in ("datafusion", "duckdb"):
        hot = engine_hot(engine, a.data, names, frm, to, a.runs)
        cold = {name: engine_cold(engine, a.data, name, frm, to, a.runs, files) for name in names}
        refs[engine] = (hot, cold)
    bad = []
    for name in names:
        for engine, (hot, _) in refs.items():
            if hot[name][1] != v_hot[name][1]:
                bad.append(f"{name}: verbatim {v_hot[name][1]} vs {engine} {hot[name][1]} (rows, integer sum)")
    hdr = f"{'report':<28} {'rows':>6}  {'verbatim':>9} {'datafusion':>10} {'duckdb':>9}  {'÷ df':>6} {'÷ duck':>6}"
    for label, idx in (("hot", 0), ("cold", 1)):
        print(f"\n{label} (median of {a.runs}, ms)\n{hdr}")
        for name in names:
            v = v_hot[name][0] if idx == 0 else v_cold[name]
            df = refs["datafusion"][0][name][0] if idx == 0 else refs["datafusion"][1][name]
            dk = refs["duckdb"][0][name][0] if idx == 0 else refs["duckdb"][1][name]
            print(f"{name:<28} {v_hot[name][1][0]:>6}  {v * 1e3:>9.1f} {df * 1e3:>10.1f} {dk * 1e3:>9.1f}  "
                  f"{v / df:>6.2f} {v / dk:>6.2f}", flush=True)
    print("\ngoal: verbatim ≤ 1.2 × datafusion and ≤ 1.5 × duckdb")
    if bad:
        print("ANSWERS DIFFER:\n  " + "\n  ".join(bad))
        sys.exit(1)
    print("answers agree (row counts and integer sums) across the three engines")


if __name__ == "__main__":
    main()
