#!/usr/bin/env python3
"""Memory pressure (issue 16): the proxy in a cgroup with a memory limit,
and many clients each holding a large partial request head (the heap grows
by about 64 KiB per client, and the unread bytes wait in socket buffers
the cgroup is charged for). With overload protection (the default
`runtime.overload_memory_percent = 85`) the proxy sheds and lives; with it
off (0) it is OOM-killed.

Needs root and a cgroup v1 memory controller at /sys/fs/cgroup/memory.
Usage: cargo build --release; ulimit -n 20000
       python3 loadtest/bench/memory_pressure.py [--clients 3000] [--limit-mib 128]
"""
import argparse, os, socket, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "outrigger")
CG = "/sys/fs/cgroup/memory/outrigger-pressure"
PORT = 18801


def run(clients, limit_mib, protect):
    os.makedirs(CG, exist_ok=True)
    open(f"{CG}/memory.limit_in_bytes", "w").write(str(limit_mib << 20))
    d = tempfile.mkdtemp(prefix="pressure-")
    cfg = f"{d}/c.toml"
    heap = "" if protect else "overload_memory_percent = 0\n"
    open(cfg, "w").write(f"""[runtime]
workers = 1
{heap}[listeners.web]
address = "127.0.0.1:{PORT}"
protocol = "http"
routes = "r"
max_connections = 20000
header_timeout = "60s"
[[routes.r]]
match.path_prefix = "/"
direct_response = {{ status = 200, body = "ok" }}
""")
    p = subprocess.Popen(["sh", "-c", f"echo $$ > {CG}/cgroup.procs; exec {BIN} run --config {cfg} --no-watch --log-level warn"],
                         stderr=open(f"{d}/log", "w"))
    time.sleep(1)
    pad = b"a" * 60000
    socks, refused, answered503 = [], 0, 0
    for i in range(clients):
        try:
            s = socket.create_connection(("127.0.0.1", PORT), timeout=2)
            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nx-pad: " + pad)
            socks.append(s)
        except OSError:
            refused += 1
        if p.poll() is not None:
            break
    time.sleep(2)
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(4096)
            if data.startswith(b"HTTP/1.1 503"):
                answered503 += 1
            elif data == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    alive = p.poll() is None
    peak = int(open(f"{CG}/memory.max_usage_in_bytes").read())
    for s in socks:
        s.close()
    served = False
    if alive:
        time.sleep(1.5)
        try:
            s = socket.create_connection(("127.0.0.1", PORT), timeout=2)
            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            served = s.recv(100).startswith(b"HTTP/1.1 200")
        except OSError:
            pass
        p.terminate()
        p.wait()
    log = open(f"{d}/log").read()
    shed = "shedding" in log
    print(f"protection {'on ' if protect else 'off'}: {clients} clients x 60 KB heads, cgroup limit {limit_mib} MiB: "
          f"proxy {'alive' if alive else 'DEAD (exit ' + str(p.returncode) + ')'}, peak cgroup memory {peak / 2**20:.0f} MiB, "
          f"heads answered 503 {answered503}, closed {closed}, connect failures {refused}, "
          f"logged shedding {shed}, served a request afterwards {served}")
    open(f"{CG}/memory.max_usage_in_bytes", "w").write("0")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=3000)
    ap.add_argument("--limit-mib", type=int, default=128)
    a = ap.parse_args()
    run(a.clients, a.limit_mib, True)
    run(a.clients, a.limit_mib, False)


if __name__ == "__main__":
    main()
