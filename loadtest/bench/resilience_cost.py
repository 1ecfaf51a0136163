#!/usr/bin/env python3
"""The cost of the resilience layer when nothing fails (issue 10): the same
proxy with and without retries, a retry budget, circuit-breaker limits,
outlier detection, a health check and a rate limit that never trigger,
interleaved runs, median of N.

Usage: python3 loadtest/bench/resilience_cost.py [--runs 5] [--duration 5s]
Needs: cargo build --release. Proxy on --proxy-core, upstream and load on
--load-core (outrigger-load serve http, outrigger-load http -c 64)."""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import cpu_seconds, start_outrigger  # noqa: E402

BIN = os.path.join(os.path.dirname(__file__), "../../target/release")
LAYER_ROUTE = """retry = { attempts = 2, per_try_timeout = "5s" }
rate_limit = { requests_per_second = 10000000, burst = 100000 }"""
LAYER_CLUSTER = """outlier_detection = { consecutive_5xx = 5 }
circuit_breaker = { max_connections = 100000, max_pending_requests = 100000, max_requests = 100000 }
health_check = { protocol = "http", path = "/", interval = "1s" }"""


def load(url, duration, core):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(["taskset", "-c", core, f"{BIN}/outrigger-load", "http", url, "-c", "64", "-t", "1",
                        "-d", duration, "--warmup", "1s", "--json", out.name],
                       check=True, stdout=subprocess.DEVNULL)
        return json.load(open(out.name))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--proxy-core", default="1")
    ap.add_argument("--load-core", default="0")
    ap.add_argument("--io", default="auto")
    a = ap.parse_args()
    secs = float(a.duration.rstrip("s"))
    up = subprocess.Popen(["taskset", "-c", a.load_core, f"{BIN}/outrigger-load", "serve", "http",
                           "--addr", "127.0.0.1:18300"], stdout=subprocess.DEVNULL)
    d = tempfile.mkdtemp()
    variants = {"plain": ("", ""), "layer": (LAYER_ROUTE, LAYER_CLUSTER)}
    results = {k: [] for k in variants}
    try:
        time.sleep(0.5)
        for _ in range(a.runs):
            for i, (name, (route, cluster)) in enumerate(variants.items()):
                port = 18310 + i
                p = start_outrigger(f"{BIN}/outrigger", f"{d}/{name}.toml", a.io, port, "127.0.0.1:18300",
                                    a.proxy_core, route, cluster)
                time.sleep(0.5)
                c0, t0 = cpu_seconds(p.pid), time.time()
                r = load(f"http://127.0.0.1:{port}/", a.duration, a.load_core)
                c1 = cpu_seconds(p.pid)
                p.terminate()
                p.wait()
                rps = r["operations_per_second"]
                results[name].append((rps, 1e6 * (c1 - c0) / (rps * (secs + 1))))
    finally:
        up.terminate()
    print("| variant | req/s (median) | proxy CPU µs/request (median) | runs |")
    print("|---|---:|---:|---|")
    for name, rs in results.items():
        print(f"| {name} | {statistics.median(r[0] for r in rs):,.0f} | "
              f"{statistics.median(r[1] for r in rs):.2f} | {', '.join(f'{r[0]:,.0f}' for r in rs)} |")


if __name__ == "__main__":
    main()
