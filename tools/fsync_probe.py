#!/usr/bin/env python3
"""fdatasync reference: p50/p99 of (append N bytes + fdatasync) in DIR, as JSON.

usage: fsync_probe.py DIR [BYTES] [RATE] [COUNT] [MODE]
Without RATE (or with 0) the appends run back to back (the disk's queue
stays busy); with RATE they are paced at RATE per second, as a server at
that load syncs a disk that is idle between writes. COUNT appends (2,000
by default). MODE `append` (the default) grows the file with each write,
as Verbatim's log does; `overwrite` first fills the file with zeros and
syncs it, so each write lands inside the file's size and its fdatasync has
no size change to journal (what a preallocated log would pay).
"""
import json, os, sys, time
d = sys.argv[1] if len(sys.argv) > 1 else "."
size = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
rate = float(sys.argv[3]) if len(sys.argv) > 3 and float(sys.argv[3]) > 0 else None
n = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
mode = sys.argv[5] if len(sys.argv) > 5 else "append"
if mode not in ("append", "overwrite"):
    sys.exit(f"MODE is append or overwrite, not {mode!r}")
path = os.path.join(d, f"fsync.probe.{os.getpid()}")
if mode == "append":
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
else:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"\0" * (size * n))
    os.fsync(fd)
    os.lseek(fd, 0, os.SEEK_SET)
buf, lat = b"x" * size, []
start = time.perf_counter()
for i in range(n):
    if rate:
        due = start + i / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
    t = time.perf_counter(); os.write(fd, buf); os.fdatasync(fd); lat.append((time.perf_counter() - t) * 1e3)
os.close(fd); os.unlink(path); lat.sort()
out = {"bytes": size, "mode": mode, "p50_ms": round(lat[n // 2], 3), "p99_ms": round(lat[n * 99 // 100], 3)}
if rate:
    out["rate"] = rate
print(json.dumps(out))
