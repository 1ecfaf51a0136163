#!/usr/bin/env python3
"""TLS side by side (issue 11): Outrigger and nginx terminating TLS 1.3
(ECDSA P-256) in the same position, each one worker pinned to the proxy
core, in front of one nginx backend; wrk on the load core.

- full handshakes: `openssl s_time -new` (a new connection and a full
  TLS 1.3 handshake each time, no resumption; one client process, so the
  figure to compare is the proxy's CPU per handshake);
- handshakes/s under wrk with `Connection: close` (a new connection per
  request; wrk resumes sessions, so this is a mix of full and resumed
  handshakes; both servers resume: nginx with its session cache and
  tickets on, Outrigger with rustls's defaults);
- HTTPS keep-alive req/s and proxy CPU µs per request, 128 B and 1 KiB;
- mesh: two Outrigger instances in series with mTLS (outbound mesh cluster
  -> inbound mesh listener) against the same pair in plaintext, both
  pinned to the proxy core, 128 B.

Interleaved rounds, medians. Usage:
  python3 loadtest/bench/tls_bench.py [--runs 3] [--duration 5s]
Needs: cargo build --release; nginx, wrk, openssl."""
import argparse, os, re, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import cpu_seconds, start_nginx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release")
BACKEND = "127.0.0.1:18600"


def wrk(url, duration, core, close=False):
    cmd = ["taskset", "-c", core, "wrk", "-t1", "-c64", f"-d{duration}", url]
    if close:
        cmd[4:4] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def measure(pids, url, duration, core, close=False):
    secs = float(duration.rstrip("s"))
    c0 = sum(cpu_seconds(p) for p in pids)
    rps = wrk(url, duration, core, close)
    c1 = sum(cpu_seconds(p) for p in pids)
    return rps, 1e6 * (c1 - c0) / (rps * secs)


def s_time(pid, port, duration, core):
    """Full handshakes per second and proxy CPU µs per handshake."""
    secs = int(float(duration.rstrip("s")))
    c0 = cpu_seconds(pid)
    out = subprocess.run(["taskset", "-c", core, "openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
                          "-time", str(secs)], capture_output=True, text=True).stdout
    c1 = cpu_seconds(pid)
    n = int(re.search(r"(\d+) connections in [\d.]+s", out).group(1))
    return n / secs, 1e6 * (c1 - c0) / max(n, 1)


def outrigger(d, name, config, core):
    path = f"{d}/{name}.toml"
    with open(path, "w") as f:
        f.write(config)
    return subprocess.Popen(["taskset", "-c", core, f"{BIN}/outrigger", "run", "--config", path, "--no-watch",
                             "--log-level", "error"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--proxy-core", default="1")
    ap.add_argument("--load-core", default="0")
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    # ECDSA P-256 server certificate.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    subprocess.run([f"{BIN}/outrigger", "certs", "demo", f"{d}/mesh"], check=True, capture_output=True)
    procs = [start_nginx(f"{d}/backend", a.load_core,
                         f"server {{ listen {BACKEND}; location /128 {{ return 200 '{'x' * 128}'; }}"
                         f" location /1024 {{ return 200 '{'x' * 1024}'; }} }}")]
    ngx = start_nginx(f"{d}/tlsproxy", a.proxy_core, f"""
upstream be {{ server {BACKEND}; keepalive 64; }}
server {{ listen 127.0.0.1:18610 ssl; ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;
  ssl_protocols TLSv1.3; ssl_session_tickets on; ssl_session_cache shared:S:10m;
  location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""")
    og = outrigger(d, "tls", f"""[runtime]
workers = 1
pin_workers = false
[admin]
address = "127.0.0.1:0"
[listeners.web]
address = "127.0.0.1:18620"
protocol = "http"
routes = "main"
tls = {{ cert = "{d}/cert.pem", key = "{d}/key.pem", min_version = "1.3" }}
[[routes.main]]
match.path_prefix = "/"
cluster = "be"
[clusters.be]
endpoints = ["{BACKEND}"]
max_idle_connections = 128
""", a.proxy_core)
    ident = lambda who: f"""[identity]
cert = "{d}/mesh/{who}.pem"
key = "{d}/mesh/{who}.key"
trust_bundle = "{d}/mesh/bundle.pem"
trust_domain = "example.org"
"""
    pair = {}
    for mode, port in [("plain", 18630), ("mesh", 18640)]:
        inbound_tls = 'tls = { mode = "mesh" }' if mode == "mesh" else ""
        cluster_tls = ('tls = { mode = "mesh", identities = ["spiffe://example.org/ns/shop/sa/orders"] }'
                       if mode == "mesh" else "")
        inbound = outrigger(d, f"{mode}-in", f"""{ident("orders") if mode == "mesh" else ""}
[runtime]
workers = 1
pin_workers = false
[admin]
address = "127.0.0.1:0"
[listeners.inbound]
address = "127.0.0.1:{port + 1}"
protocol = "http"
routes = "main"
{inbound_tls}
[[routes.main]]
match.path_prefix = "/"
cluster = "be"
[clusters.be]
endpoints = ["{BACKEND}"]
max_idle_connections = 128
""", a.proxy_core)
        outbound = outrigger(d, f"{mode}-out", f"""{ident("frontend") if mode == "mesh" else ""}
[runtime]
workers = 1
pin_workers = false
[admin]
address = "127.0.0.1:0"
[listeners.outbound]
address = "127.0.0.1:{port}"
protocol = "http"
routes = "main"
[[routes.main]]
match.path_prefix = "/"
cluster = "inbound"
[clusters.inbound]
endpoints = ["127.0.0.1:{port + 1}"]
max_idle_connections = 128
{cluster_tls}
""", a.proxy_core)
        pair[mode] = (port, [inbound, outbound])
    procs += [ngx, og] + pair["plain"][1] + pair["mesh"][1]
    time.sleep(1.0)
    rows = {}

    def add(key, value):
        rows.setdefault(key, []).append(value)

    try:
        for _ in range(a.runs):
            for name, pid, port in [("outrigger", og.pid, 18620), ("nginx", ngx.pid, 18610)]:
                add((name, "full handshakes (s_time -new)"), s_time(pid, port, a.duration, a.load_core))
                add((name, "new connection per request (wrk)"),
                    measure([pid], f"https://127.0.0.1:{port}/128", a.duration, a.load_core, close=True))
                for size in ["128", "1024"]:
                    add((name, f"https {size} B"), measure([pid], f"https://127.0.0.1:{port}/{size}",
                                                           a.duration, a.load_core))
            for mode in ["plain", "mesh"]:
                port, ps = pair[mode]
                add((f"two outriggers, {mode}", "128 B"),
                    measure([p.pid for p in ps], f"http://127.0.0.1:{port}/128", a.duration, a.load_core))
    finally:
        for p in procs:
            p.terminate()
    print("| proxy | workload | req/s (median) | proxy CPU µs/request (median) | req/s per run |")
    print("|---|---|---:|---:|---|")
    for (name, what), vals in rows.items():
        rps = statistics.median(v[0] for v in vals)
        cpu = statistics.median(v[1] for v in vals)
        print(f"| {name} | {what} | {rps:,.0f} | {cpu:.1f} | {', '.join(f'{v[0]:,.0f}' for v in vals)} |")


if __name__ == "__main__":
    main()
