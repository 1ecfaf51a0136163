#!/usr/bin/env python3
"""System calls per HTTP/2 request: h2load -c 16 -m 10 (cleartext, prior
knowledge) through Outrigger builds in front of an nginx upstream (HTTP/1.1,
--body bytes, default 1 KiB), counted with `perf stat` on the syscall tracepoints of the proxy's
process for the whole run (cheap, unlike strace, which slows the proxy until
every build batches). Writes per request show whether the frames of
concurrent responses are gathered.

Usage: python3 loadtest/bench/h2_syscalls.py [--requests 200000] [--body 1024]
           --bin NAME=PATH [--bin NAME=PATH ...]
Needs: root (perf tracepoints), nginx, perf, h2load (nghttp2-client).
"""
import argparse, os, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

UP, PROXY = 18491, 18490
CALLS = ["write", "writev", "sendto", "sendmsg", "read", "recvfrom", "io_uring_enter", "epoll_wait"]


def wait_port(port):
    import socket
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def one(d, binary, requests):
    cfg = f"{d}/o.toml"
    with open(cfg, "w") as f:
        f.write(f"""[runtime]
workers = 1
io = "auto"
pin_workers = false
[listeners.web]
address = "127.0.0.1:{PROXY}"
protocol = "http"
routes = "main"
[[routes.main]]
match.path_prefix = "/"
cluster = "up"
[clusters.up]
endpoints = ["127.0.0.1:{UP}"]
max_idle_connections = 256
""")
    p = subprocess.Popen(["taskset", "-c", "1", binary, "run", "--config", cfg, "--no-watch",
                          "--log-level", "warn"])
    wait_port(PROXY)
    out = f"{d}/perf.txt"
    events = ",".join(f"syscalls:sys_enter_{c}" for c in CALLS) + ",raw_syscalls:sys_enter"
    st = subprocess.Popen(["perf", "stat", "-x", ",", "-o", out, "-e", events, "-p", str(p.pid)],
                          stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    load = subprocess.run(["taskset", "-c", "0", "h2load", "-c", "16", "-m", "10", "-t", "1",
                           "-n", str(requests), f"http://127.0.0.1:{PROXY}/"],
                          capture_output=True, text=True)
    st.send_signal(signal.SIGINT)
    st.wait()
    p.send_signal(signal.SIGTERM)
    p.wait()
    succeeded = int(load.stdout.split(" done, ")[1].split(" succeeded")[0])
    calls = {}
    for line in open(out):
        parts = line.strip().split(",")
        if len(parts) > 2 and parts[0].isdigit():
            name = parts[2].split(":")[-1].replace("sys_enter_", "")
            calls["all" if name == "sys_enter" else name] = int(parts[0])
    return succeeded, calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200000)
    ap.add_argument("--body", type=int, default=1024)
    ap.add_argument("--bin", action="append", required=True, help="NAME=PATH")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="h2sys-")
    up = benchlib.start_nginx(f"{d}/up", "0", f"""
  server {{ listen 127.0.0.1:{UP}; location / {{ return 200 "{'x' * (a.body - 1)}\\n"; }} }}""")
    wait_port(UP)
    rows = []
    try:
        for spec in a.bin:
            name, path = spec.split("=", 1)
            n, calls = one(d, path, a.requests)
            rows.append((name, n, calls))
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait()
    names = CALLS + ["all"]
    print("| build | requests | " + " | ".join(f"{k}/req" for k in names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for name, n, c in rows:
        print(f"| {name} | {n} | " + " | ".join(f"{c.get(k, 0) / n:.2f}" for k in names) + " |")


if __name__ == "__main__":
    main()
