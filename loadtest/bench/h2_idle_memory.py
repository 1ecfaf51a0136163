#!/usr/bin/env python3
"""RSS per idle HTTP/2 connection (next to HTTP/1.1): N connections that
each made one request and then stay open and idle.

Usage: cargo build --release; ulimit -n 20000
       python3 loadtest/bench/h2_idle_memory.py 3000 h2   (or h1)
"""
import socket, subprocess, time, os, sys
cfg = "/tmp/h2idle.toml"
open(cfg, "w").write('''[runtime]
workers = 1
[listeners.web]
address = "127.0.0.1:18590"
protocol = "http"
routes = "main"
[[routes.main]]
match.path_prefix = "/"
direct_response = { status = 200, body = "ok" }
''')
p = subprocess.Popen(["./target/release/outrigger", "run", "--config", cfg, "--no-watch", "--log-level", "warn"])
time.sleep(1)
def rss():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1]) * 1024
N = int(sys.argv[1])
mode = sys.argv[2]
before = rss()
socks = []
for i in range(N):
    s = socket.create_connection(("127.0.0.1", 18590))
    if mode == "h2":
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            # one request so the connection is a served one
        block = b"".join(b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v for n, v in
                         [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")])
        s.sendall(len(block).to_bytes(3, "big") + b"\x01\x05" + (1).to_bytes(4, "big") + block)
    else:
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    socks.append(s)
time.sleep(3)
for s in socks:
    s.setblocking(False)
    try:
        s.recv(65536)
    except BlockingIOError:
        pass
time.sleep(1)
after = rss()
print(f"{mode}: {N} idle connections, RSS {before/1e6:.1f} MB -> {after/1e6:.1f} MB, {(after-before)/N:.0f} B each")
p.terminate(); p.wait()
