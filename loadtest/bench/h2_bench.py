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
           [--bin NAME=PATH ...] [--only SUBSTRING ...] [--body 128] [--tls]
--tls: HTTP/2 over TLS 1.3 to the proxy (ALPN h2, an ECDSA P-256
certificate made with openssl) instead of cleartext prior knowledge.
--bin adds Outrigger builds to compare (A/B, interleaved in every round);
--only keeps the rows whose name contains one of the substrings.
Needs: cargo build --release; nginx, haproxy and h2load (nghttp2-client).
"""
import argparse, os, shutil, signal, statistics, subprocess, tempfile, time

from benchlib import cpu_seconds, start_haproxy, start_nginx, NGINX

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


TLS = {"on": False}


def make_cert(d):
    """An ECDSA P-256 certificate for 127.0.0.1 (and its key, and both in
    one PEM for HAProxy)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    with open(f"{d}/both.pem", "w") as f:
        f.write(open(f"{d}/cert.pem").read() + open(f"{d}/key.pem").read())


def outrigger(d, upstream_h2, binary=BIN):
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
{f'tls = {{ cert = "{d}/cert.pem", key = "{d}/key.pem" }}' if TLS["on"] else ""}
[[routes.main]]
match.path_prefix = "/"
cluster = "up"
[clusters.up]
endpoints = ["127.0.0.1:{up}"]
max_idle_connections = 256
{proto}
""")
    return subprocess.Popen(["taskset", "-c", PROXY_CORE, binary, "run", "--config", cfg, "--no-watch",
                             "--log-level", "warn"])


def nginx_proxy(d, upstream_h2):
    if upstream_h2:
        loc = f"grpc_pass grpc://127.0.0.1:{UP_H2};"
    else:
        loc = (f"proxy_pass http://up1; proxy_http_version 1.1; proxy_set_header Connection \"\";")
    tls = (f"ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem; "
           "ssl_session_cache shared:S:1m;") if TLS["on"] else ""
    servers = f"""upstream up1 {{ server 127.0.0.1:{UP_H1}; keepalive 256; }}
  server {{ listen 127.0.0.1:{PROXY} {"ssl " if TLS["on"] else ""}http2; {tls} location / {{ {loc} }} }}"""
    return start_nginx(f"{d}/nginx-proxy", PROXY_CORE, servers)


def haproxy(d, upstream_h2):
    server = (f"server s1 127.0.0.1:{UP_H2} proto h2" if upstream_h2 else f"server s1 127.0.0.1:{UP_H1}")
    bind = f"ssl crt {d}/both.pem alpn h2" if TLS["on"] else "proto h2"
    return start_haproxy(d, PROXY_CORE, "http", f"""frontend fe
  bind 127.0.0.1:{PROXY} {bind}
  default_backend be
backend be
  {server}""", extra_defaults="  http-reuse always")


def run_one(d, name, start, duration):
    p = start()
    wait_port(PROXY)
    time.sleep(0.3)
    log = f"{d}/h2load.log"
    if os.path.exists(log):
        os.remove(log)
    load = subprocess.Popen(["taskset", "-c", LOAD_CORE, "h2load", "-c", "16", "-m", "10", "-t", "1",
                             "-D", str(duration), "--warm-up-time", "1", "--log-file", log,
                             f"{'https' if TLS['on'] else 'http'}://127.0.0.1:{PROXY}/"],
                            stdout=subprocess.PIPE, text=True)
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
    ap.add_argument("--bin", action="append", default=[], help="NAME=PATH of another outrigger build")
    ap.add_argument("--only", action="append", default=[], help="keep rows whose name contains this")
    ap.add_argument("--body", type=int, default=len(BODY), help="response body bytes")
    ap.add_argument("--tls", action="store_true", help="HTTP/2 over TLS to the proxy")
    a = ap.parse_args()
    TLS["on"] = a.tls
    body = "x" * (a.body - 1) + "\n"
    d = tempfile.mkdtemp(prefix="h2bench-")
    if a.tls:
        make_cert(d)
    up = start_nginx(f"{d}/upstream", LOAD_CORE, f"""
  server {{ listen 127.0.0.1:{UP_H1}; location / {{ return 200 "{body}"; }} }}
  server {{ listen 127.0.0.1:{UP_H2} http2; location / {{ return 200 "{body}"; }} }}""")
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
    for spec in a.bin:
        name, path = spec.split("=", 1)
        proxies.append((f"outrigger[{name}] h2->h1", lambda p=path: outrigger(d, False, p)))
        proxies.append((f"outrigger[{name}] h2->h2", lambda p=path: outrigger(d, True, p)))
    if a.only:
        proxies = [(n, f) for n, f in proxies if any(o in n for o in a.only)]
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
