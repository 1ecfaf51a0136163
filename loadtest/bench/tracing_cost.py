#!/usr/bin/env python3
"""Proxy CPU per request with tracing off, on at sampling 0.01, and on at
1.0, against a local OTLP/HTTP receiver (issue 15; target < 1 us per
request at 0.01). Interleaved runs, medians.

Usage: python3 loadtest/bench/tracing_cost.py [--runs 5] [--duration 4s]
Needs: cargo build --release."""
import argparse, http.server, json, os, statistics, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import cpu_seconds  # noqa: E402

BIN = os.path.join(os.path.dirname(__file__), "../../target/release")


class Receiver(http.server.BaseHTTPRequestHandler):
    spans_bytes = 0

    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        Receiver.spans_bytes += len(self.rfile.read(n))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def config(port, tracing):
    return f"""[runtime]
workers = 1
pin_workers = false
{tracing}
[admin]
address = "127.0.0.1:0"
[listeners.web]
address = "127.0.0.1:{port}"
protocol = "http"
routes = "main"
[[routes.main]]
match.path_prefix = "/"
cluster = "up"
[clusters.up]
endpoints = ["127.0.0.1:18700"]
max_idle_connections = 128
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", default="4s")
    ap.add_argument("--proxy-core", default="1")
    ap.add_argument("--load-core", default="0")
    a = ap.parse_args()
    secs = float(a.duration.rstrip("s"))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 18799), Receiver)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    up = subprocess.Popen(["taskset", "-c", a.load_core, f"{BIN}/outrigger-load", "serve", "http", "--addr",
                           "127.0.0.1:18700", "--body-size", "128"], stdout=subprocess.DEVNULL)
    d = tempfile.mkdtemp()
    endpoint = 'otlp_endpoint = "http://127.0.0.1:18799/v1/traces"'
    variants = {
        "tracing off": "",
        "sampling 0.01": f"[tracing]\nsampling = 0.01\n{endpoint}",
        "sampling 1.0": f"[tracing]\nsampling = 1.0\n{endpoint}",
    }
    results = {k: [] for k in variants}
    try:
        time.sleep(0.5)
        for _ in range(a.runs):
            for i, (name, tracing) in enumerate(variants.items()):
                port = 18710 + i
                path = f"{d}/{i}.toml"
                open(path, "w").write(config(port, tracing))
                p = subprocess.Popen(["taskset", "-c", a.proxy_core, f"{BIN}/outrigger", "run", "-c", path,
                                      "--no-watch", "--log-level", "error"])
                time.sleep(0.5)
                with tempfile.NamedTemporaryFile(suffix=".json") as out:
                    c0 = cpu_seconds(p.pid)
                    subprocess.run(["taskset", "-c", a.load_core, f"{BIN}/outrigger-load", "http",
                                    f"http://127.0.0.1:{port}/", "-c", "64", "-t", "1", "-d", a.duration,
                                    "--warmup", "1s", "--json", out.name], check=True, stdout=subprocess.DEVNULL)
                    c1 = cpu_seconds(p.pid)
                    rps = json.load(open(out.name))["operations_per_second"]
                p.terminate()
                p.wait()
                results[name].append((rps, 1e6 * (c1 - c0) / (rps * (secs + 1))))
    finally:
        up.terminate()
        srv.shutdown()
    print("| variant | req/s (median) | proxy CPU µs/request (median) | CPU per run |")
    print("|---|---:|---:|---|")
    for name, rs in results.items():
        print(f"| {name} | {statistics.median(r[0] for r in rs):,.0f} | {statistics.median(r[1] for r in rs):.2f} | "
              f"{', '.join(f'{r[1]:.1f}' for r in rs)} |")


if __name__ == "__main__":
    main()
