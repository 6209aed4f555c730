#!/usr/bin/env python3
"""Plain-copy reference for log shipping: sends FILES over one loopback TCP
connection to a receiver thread that writes each into DEST and fdatasyncs it,
as a shipper without checks would. Prints JSON: bytes, seconds, MB/s."""
import json, os, socket, struct, sys, threading, time

dest, files = sys.argv[1], sys.argv[2:]
os.makedirs(dest, exist_ok=True)
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
done = threading.Event()

def receive():
    conn, _ = srv.accept()
    f = conn.makefile("rb")
    while True:
        head = f.read(12)
        if len(head) < 12:
            break
        name_len, size = struct.unpack("<IQ", head)
        name = f.read(name_len).decode()
        fd = os.open(os.path.join(dest, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        left = size
        while left:
            chunk = f.read(min(left, 1 << 20))
            os.write(fd, chunk)
            left -= len(chunk)
        os.fdatasync(fd)
        os.close(fd)
    dfd = os.open(dest, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)
    conn.sendall(b"k")
    done.set()

t = threading.Thread(target=receive)
t.start()
start = time.perf_counter()
total = 0
with socket.create_connection(srv.getsockname()) as s:
    for path in files:
        name = os.path.basename(path).encode()
        size = os.path.getsize(path)
        s.sendall(struct.pack("<IQ", len(name), size) + name)
        with open(path, "rb") as src:
            s.sendfile(src)
        total += size
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
secs = time.perf_counter() - start
t.join()
print(json.dumps({"bytes": total, "seconds": round(secs, 3), "mb_per_sec": round(total / secs / 1e6, 1)}))
