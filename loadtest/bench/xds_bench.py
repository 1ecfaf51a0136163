#!/usr/bin/env python3
"""Discovery benchmark for xDS (report only; nothing is asserted).

A management server (`outrigger-load xds-plane`) pushes 1,000 EDS clusters
of 10 endpoints each, one route configuration of 1,000 routes and one HTTP
listener to one outrigger worker. Per run:

1. sync: from the proxy's first xDS request (logged by the plane) to the
   first request answered through the last route (`/c999/`);
2. snapshot memory: proxy RSS after the sync minus its RSS before (admin
   API up, xDS not yet answering);
3. update: from a route-configuration push (1,000 routes + 1) to the
   changed route answering;
4. p99 of a steady open-loop load (10,000 req/s, 16 connections, 10 s)
   with no endpoint updates, and with one cluster's weights changed every
   100 ms (state of the world: every EDS push carries all 1,000
   assignments).

The proxy is pinned to PROXY_CORE; load, backends and plane to LOAD_CORE.
Modes interleave; medians of --runs.

Usage: python3 loadtest/bench/xds_bench.py [--runs 3] [--rate 10000] [--duration 10s]
Needs: cargo build --release.
"""
import argparse, json, os, statistics, subprocess, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release")
ADMIN = "127.0.0.1:19911"
PLANE = "127.0.0.1:18000"
LISTEN = "127.0.0.1:10000"
BACKEND_PORT = 18300
PROXY_CORE, LOAD_CORE = "0", "1"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def wait_for(cond, limit=60):
    t = time.time()
    while time.time() - t < limit:
        try:
            if cond():
                return time.time()
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError("timed out")


def one_run(d, churn, args):
    procs = []
    try:
        for j in range(10):
            procs.append(subprocess.Popen(
                ["taskset", "-c", LOAD_CORE, f"{BIN}/outrigger-load", "serve", "http",
                 "--addr", f"127.0.0.1:{BACKEND_PORT + j}", "--io", "epoll"],
                stdout=subprocess.DEVNULL))
        cfg = f"{d}/outrigger.toml"
        with open(cfg, "w") as f:
            f.write(f'[runtime]\nworkers = 1\npin_workers = false\n[admin]\naddress = "{ADMIN}"\n'
                    f'[xds]\naddress = "{PLANE}"\nnode_id = "bench"\n')
        proxy = subprocess.Popen(["taskset", "-c", PROXY_CORE, f"{BIN}/outrigger", "run", "--no-watch",
                                  "--config", cfg, "--log-level", "warn"])
        procs.append(proxy)
        wait_for(lambda: get(f"http://{ADMIN}/ready")[0] == 200)
        time.sleep(1.0)
        before = rss_kib(proxy.pid)
        cmd = ["taskset", "-c", LOAD_CORE, f"{BIN}/outrigger-load", "xds-plane", "--addr", PLANE,
               "--listen", LISTEN, "--backend-port", str(BACKEND_PORT), "--update-after", "4s"]
        if churn:
            cmd += ["--churn", "100ms"]
        plane = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        procs.append(plane)
        marks = {}

        def mark(name):
            while name not in marks:
                line = plane.stdout.readline()
                if not line:
                    raise RuntimeError("the plane exited")
                parts = line.split()
                if len(parts) == 2 and parts[0].endswith("-ms"):
                    marks[parts[0]] = int(parts[1]) / 1000.0
            return marks[name]

        served = wait_for(lambda: get(f"http://{LISTEN}/c999/x")[0] == 200)
        sync = served - mark("first-request-ms")
        time.sleep(1.0)
        after = rss_kib(proxy.pid)
        pushed = mark("update-pushed-ms")
        changed = wait_for(lambda: get(f"http://{LISTEN}/probe")[1] == b"v2")
        update = changed - pushed
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run(["taskset", "-c", LOAD_CORE, f"{BIN}/outrigger-load", "http", f"http://{LISTEN}/c0/",
                            "-c", "16", "-t", "1", "-d", args.duration, "--warmup", "1s", "-R", str(args.rate),
                            "--json", out.name], check=True, stdout=subprocess.DEVNULL)
            report = json.load(open(out.name))
        generation = json.loads(get(f"http://{ADMIN}/config")[1])["generation"]
        return {"sync_ms": sync * 1000, "update_ms": update * 1000, "snapshot_kib": after - before,
                "rss_kib": after, "p99_us": report["latency_us"]["p99"], "p50_us": report["latency_us"]["p50"],
                "errors": sum(report.get("errors", {}).values()), "generation": generation}
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=int, default=10000)
    ap.add_argument("--duration", default="10s")
    args = ap.parse_args()
    results = {False: [], True: []}
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.runs):
            for churn in (False, True):
                r = one_run(d, churn, args)
                print(f"run {i} churn={churn}: {r}", flush=True)
                results[churn].append(r)
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    allr = results[False] + results[True]
    print(f"\nsync to serving (ms): {med(allr, 'sync_ms'):.0f}; route update to serving (ms): "
          f"{med(allr, 'update_ms'):.0f}")
    print("| condition | RSS added by the xDS config (KiB) | RSS (KiB) | p50 us | p99 us | errors |")
    print("|---|---|---|---|---|---|")
    for churn, name in ((False, "no endpoint updates"), (True, "EDS push every 100 ms")):
        rs = results[churn]
        print(f"| {name} | {med(rs, 'snapshot_kib'):.0f} | {med(rs, 'rss_kib'):.0f} | {med(rs, 'p50_us'):.0f} | "
              f"{med(rs, 'p99_us'):.0f} | {med(rs, 'errors'):.0f} |")


if __name__ == "__main__":
    main()
