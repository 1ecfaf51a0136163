#!/usr/bin/env python3
"""HTTP/2 benchmark (issue 12): h2load -c 16 -m 10 through Outrigger, nginx
and HAProxy, HTTP/2 to the proxy and HTTP/1.1 or HTTP/2 (cleartext) to the
upstream.

Layout: the proxy under test (one worker) pinned to PROXY_CORE; the upstream
(nginx, one worker: 128 B responses over HTTP/1.1 on one port and h2c on
another) and the client (h2load, one thread) on LOAD_CORE. Rounds interleave
the proxies; medians are reported: requests per second, proxy CPU µs per
request (/proc), and p50/p99 of h2load's per-request times (--log-file).

nginx has no HTTP/2 proxy_pass: its h2 -> h2 row uses grpc_pass (a generic
HTTP/2 proxy in practice). HAProxy: `proto h2` on the bind and the server.

Usage: python3 loadtest/bench/h2_bench.py [--runs 3] [--duration 5]
Needs: cargo build --release; nginx, haproxy and h2load (nghttp2-client).
"""
import argparse, os, shutil, signal, statistics, subprocess, tempfile, time

from benchlib import cpu_seconds, start_nginx, NGINX

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "outrigger")
PROXY_CORE, LOAD_CORE = "1", "0"
BODY = "x" * 127 + "\n"
UP_H1, UP_H2, PROXY = 18481, 18482, 18480


def wait_port(port):
    import socket
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def outrigger(d, upstream_h2):
    cfg = f"{d}/outrigger.toml"
    up = UP_H2 if upstream_h2 else UP_H1
    proto = 'protocol = "http2"' if upstream_h2 else ""
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
endpoints = ["127.0.0.1:{up}"]
max_idle_connections = 256
{proto}
""")
    return subprocess.Popen(["taskset", "-c", PROXY_CORE, BIN, "run", "--config", cfg, "--no-watch",
                             "--log-level", "warn"])


def nginx_proxy(d, upstream_h2):
    if upstream_h2:
        loc = f"grpc_pass grpc://127.0.0.1:{UP_H2};"
    else:
        loc = (f"proxy_pass http://up1; proxy_http_version 1.1; proxy_set_header Connection \"\";")
    servers = f"""upstream up1 {{ server 127.0.0.1:{UP_H1}; keepalive 256; }}
  server {{ listen 127.0.0.1:{PROXY} http2; location / {{ {loc} }} }}"""
    return start_nginx(f"{d}/nginx-proxy", PROXY_CORE, servers)


def haproxy(d, upstream_h2):
    conf = f"{d}/haproxy.cfg"
    server = (f"server s1 127.0.0.1:{UP_H2} proto h2" if upstream_h2 else f"server s1 127.0.0.1:{UP_H1}")
    with open(conf, "w") as f:
        f.write(f"""global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:{PROXY} proto h2
  default_backend be
backend be
  {server}
""")
    return subprocess.Popen(["taskset", "-c", PROXY_CORE, "haproxy", "-f", conf, "-db"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_one(d, name, start, duration):
    p = start()
    wait_port(PROXY)
    time.sleep(0.3)
    log = f"{d}/h2load.log"
    if os.path.exists(log):
        os.remove(log)
    load = subprocess.Popen(["taskset", "-c", LOAD_CORE, "h2load", "-c", "16", "-m", "10", "-t", "1",
                             "-D", str(duration), "--warm-up-time", "1", "--log-file", log,
                             f"http://127.0.0.1:{PROXY}/"], stdout=subprocess.PIPE, text=True)
    # CPU is sampled over the measured period only (after the warm-up).
    time.sleep(1.0)
    c0 = cpu_seconds(p.pid)
    out, _ = load.communicate()
    c1 = cpu_seconds(p.pid)
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    time.sleep(0.3)
    ok = "0 failed, 0 errored" in out
    rps = float(out.split(" req/s")[0].rsplit(" ", 1)[1])
    succeeded = int(out.split(" done, ")[1].split(" succeeded")[0])
    lat = sorted(int(l.split("\t")[2]) for l in open(log) if l.strip())
    cpu_us = (c1 - c0) * 1e6 / max(succeeded, 1)
    q = lambda f: lat[min(len(lat) - 1, int(len(lat) * f))] if lat else 0
    return {"rps": rps, "cpu_us": cpu_us, "p50": q(0.50), "p99": q(0.99), "ok": ok}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="h2bench-")
    up = start_nginx(f"{d}/upstream", LOAD_CORE, f"""
  server {{ listen 127.0.0.1:{UP_H1}; location / {{ return 200 "{BODY}"; }} }}
  server {{ listen 127.0.0.1:{UP_H2} http2; location / {{ return 200 "{BODY}"; }} }}""")
    wait_port(UP_H1)
    wait_port(UP_H2)
    proxies = [
        ("outrigger h2->h1", lambda: outrigger(d, False)),
        ("nginx h2->h1", lambda: nginx_proxy(d, False)),
        ("haproxy h2->h1", lambda: haproxy(d, False)),
        ("outrigger h2->h2", lambda: outrigger(d, True)),
        ("nginx h2->h2 (grpc_pass)", lambda: nginx_proxy(d, True)),
        ("haproxy h2->h2", lambda: haproxy(d, True)),
    ]
    results = {name: [] for name, _ in proxies}
    try:
        for r in range(a.runs):
            for name, start in proxies:
                if name.startswith("haproxy") and not shutil.which("haproxy"):
                    continue
                res = run_one(d, name, start, a.duration)
                results[name].append(res)
                print(f"round {r + 1} {name}: {res}", flush=True)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait()
    print("\n| proxy | req/s | proxy CPU µs/req | p50 µs | p99 µs | all succeeded |")
    print("|---|---|---|---|---|---|")
    for name, rs in results.items():
        if not rs:
            continue
        med = lambda k: statistics.median(x[k] for x in rs)
        print(f"| {name} | {med('rps'):,.0f} | {med('cpu_us'):.1f} | {med('p50'):,.0f} | "
              f"{med('p99'):,.0f} | {all(x['ok'] for x in rs)} |")


if __name__ == "__main__":
    main()
