#!/usr/bin/env python3
"""fdatasync reference: p50/p99 of (append N bytes + fdatasync) in DIR, as JSON."""
import json, os, sys, time
d = sys.argv[1] if len(sys.argv) > 1 else "."
size = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
path = os.path.join(d, "fsync.probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
buf, lat = b"x" * size, []
for _ in range(2000):
    t = time.perf_counter(); os.write(fd, buf); os.fdatasync(fd); lat.append((time.perf_counter() - t) * 1e3)
os.close(fd); os.unlink(path); lat.sort()
print(json.dumps({"bytes": size, "p50_ms": round(lat[1000], 3), "p99_ms": round(lat[1980], 3)}))
