#!/usr/bin/env python3
"""Issue 10's second benchmark: one of two endpoints answers 503 to
everything; clients send a fixed rate (outrigger-load http -R, open loop,
latency from the intended send time). Compared: the plain proxy, and the
same proxy with a retry policy (attempts 2 on gateway-error) and outlier
detection (5 consecutive 5xx, 30 s). Reports the error rate and latency
percentiles seen by clients, median of N interleaved runs.

Usage: python3 loadtest/bench/resilience_failing.py [--runs 3] [--rate 2000] [--duration 5s]
Needs: cargo build --release."""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import start_outrigger  # noqa: E402

BIN = os.path.join(os.path.dirname(__file__), "../../target/release")
GOOD, BAD = "127.0.0.1:18400", "127.0.0.1:18401"
LAYER_ROUTE = 'retry = { attempts = 2, on = ["gateway-error"], backoff = "1ms" }'
LAYER_CLUSTER = 'outlier_detection = { consecutive_5xx = 5, base_ejection_time = "30s" }'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--proxy-core", default="1")
    ap.add_argument("--load-core", default="0")
    a = ap.parse_args()
    ups = [subprocess.Popen(["taskset", "-c", a.load_core, f"{BIN}/outrigger-load", "serve", "http",
                             "--addr", addr, "--status", status], stdout=subprocess.DEVNULL)
           for addr, status in [(GOOD, "200"), (BAD, "503")]]
    d = tempfile.mkdtemp()
    variants = {"plain": ("", ""), "retries + outlier detection": (LAYER_ROUTE, LAYER_CLUSTER)}
    results = {k: [] for k in variants}
    try:
        time.sleep(0.5)
        for _ in range(a.runs):
            for i, (name, (route, cluster)) in enumerate(variants.items()):
                port = 18410 + i
                cfg = f"{d}/{i}.toml"
                p = start_outrigger(f"{BIN}/outrigger", cfg, "auto", port, [GOOD, BAD], a.proxy_core,
                                    route, cluster)
                time.sleep(0.5)
                with tempfile.NamedTemporaryFile(suffix=".json") as out:
                    subprocess.run(["taskset", "-c", a.load_core, f"{BIN}/outrigger-load", "http",
                                    f"http://127.0.0.1:{port}/", "-c", "16", "-t", "1", "-R", str(a.rate),
                                    "-d", a.duration, "--json", out.name],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    r = json.load(open(out.name))
                p.terminate()
                p.wait()
                total = sum(r["statuses"].values())
                bad = total - r["statuses"].get("2xx", 0)
                results[name].append((100.0 * bad / max(total, 1), r["latency_us"]["p50"], r["latency_us"]["p99"]))
    finally:
        for u in ups:
            u.terminate()
    print(f"| variant | client errors (non-2xx, %) | p50 (µs) | p99 (µs) |")
    print("|---|---:|---:|---:|")
    for name, rs in results.items():
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        print(f"| {name} | {med(0):.2f} | {med(1):.0f} | {med(2):.0f} |")


if __name__ == "__main__":
    main()
