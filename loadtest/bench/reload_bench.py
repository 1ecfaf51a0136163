#!/usr/bin/env python3
"""Benchmark of the reload/admin issue (report only; nothing is asserted).

1. p99 latency at a fixed rate with and without one reload per second:
   outrigger (1 worker) on PROXY_CORE in front of nginx (1 worker); the
   open-loop generator (outrigger-load -R, corrected for coordinated
   omission) and nginx on LOAD_CORE. Runs interleave (quiet, reloading, ...).
2. Scrape cost: time of GET /metrics (and /stats) with 10 and 1,000 routes,
   after every route has served traffic (so every histogram is allocated).
3. Reload time with 10 and 1,000 routes: `duration_ms` of POST /reload
   (trigger to publication), median of 20.

Usage: python3 loadtest/bench/reload_bench.py [--runs 3] [--duration 10s] [--rate 10000]
Needs: cargo build --release; nginx (apt-get install nginx-light).
"""
import argparse, json, os, signal, statistics, subprocess, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release")
NGINX = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"
ADMIN = "127.0.0.1:19901"
UPSTREAM = "127.0.0.1:18200"
PROXY = "127.0.0.1:18201"


def nginx(d, core):
    os.makedirs(f"{d}/ngx", exist_ok=True)
    conf = f"{d}/ngx/nginx.conf"
    with open(conf, "w") as f:
        f.write(f"""daemon off; master_process off; worker_processes 1; pid {d}/ngx/pid;
error_log stderr error;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000;
  client_body_temp_path {d}/ngx/b; proxy_temp_path {d}/ngx/p; fastcgi_temp_path {d}/ngx/f;
  uwsgi_temp_path {d}/ngx/u; scgi_temp_path {d}/ngx/s;
  server {{ listen {UPSTREAM}; location / {{ return 200 "{'x' * 128}"; }} }} }}
""")
    return subprocess.Popen(["taskset", "-c", core, NGINX, "-p", f"{d}/ngx", "-c", conf])


def config(routes, tag):
    out = [f"""[runtime]
workers = 1
[admin]
address = "{ADMIN}"
[listeners.web]
address = "{PROXY}"
protocol = "http"
routes = "main"
[clusters.up]
endpoints = ["{UPSTREAM}"]
max_idle_connections = 128
"""]
    for i in range(routes - 1):
        out.append(f'[[routes.main]]\nname = "r{i}"\nmatch.path = "/r{i}"\ncluster = "up"\n'
                   f'response_headers = {{ set = {{ "x-tag" = "{tag}" }} }}\n')
    out.append(f'[[routes.main]]\nname = "default"\nmatch.path_prefix = "/"\ncluster = "up"\n'
               f'response_headers = {{ set = {{ "x-tag" = "{tag}" }} }}\n')
    return "".join(out)


def admin(method, path):
    req = urllib.request.Request(f"http://{ADMIN}{path}", method=method)
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        body = r.read()
    return time.perf_counter() - t, body


def start(d, routes, core):
    cfg = f"{d}/outrigger.toml"
    with open(cfg, "w") as f:
        f.write(config(routes, 0))
    p = subprocess.Popen(["taskset", "-c", core, f"{BIN}/outrigger", "run", "--no-watch", "--config", cfg,
                          "--log-level", "warn"])
    for _ in range(100):
        try:
            admin("GET", "/ready")
            return p, cfg
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("outrigger did not start")


def load(duration, rate, core):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(["taskset", "-c", core, f"{BIN}/outrigger-load", "http", f"http://{PROXY}/", "-c", "16",
                        "-t", "1", "-d", duration, "--warmup", "1s", "-R", str(rate), "--json", out.name],
                       check=True, stdout=subprocess.DEVNULL)
        return json.load(open(out.name))


def reloader(cfg, routes, stop, durations):
    tag = 1
    while not stop.wait(1.0):
        with open(cfg + ".tmp", "w") as f:
            f.write(config(routes, tag))
        os.rename(cfg + ".tmp", cfg)
        _, body = admin("POST", "/reload")
        durations.append(json.loads(body)["duration_ms"])
        tag += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--rate", type=int, default=10000)
    ap.add_argument("--proxy-core", default="1")
    ap.add_argument("--load-core", default="0")
    a = ap.parse_args()
    # The reloader (this process) stays off the proxy's core; the proxy's own
    # control-plane threads share core PROXY_CORE with its worker, as they
    # would in production with one worker per core.
    os.sched_setaffinity(0, {int(c) for c in a.load_core.split(",")})
    med = statistics.median
    d = tempfile.mkdtemp(prefix="outrigger-reload-bench-")
    up = nginx(d, a.load_core)
    time.sleep(0.3)
    try:
        # 1. Latency with and without reloads.
        p, cfg = start(d, 10, a.proxy_core)
        lat = {"quiet": [], "reload every 1s": []}
        try:
            for _ in range(a.runs):
                lat["quiet"].append(load(a.duration, a.rate, a.load_core))
                stop, durations = threading.Event(), []
                t = threading.Thread(target=reloader, args=(cfg, 10, stop, durations))
                t.start()
                lat["reload every 1s"].append(load(a.duration, a.rate, a.load_core))
                stop.set()
                t.join()
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
        # 2 and 3. Scrape and reload cost by route count.
        cost = {}
        for routes in (10, 1000):
            p, cfg = start(d, routes, a.proxy_core)
            try:
                for i in range(routes - 1):
                    urllib.request.urlopen(f"http://{PROXY}/r{i}", timeout=10).read()
                urllib.request.urlopen(f"http://{PROXY}/", timeout=10).read()
                scrape = [admin("GET", "/metrics") for _ in range(30)]
                stats = [admin("GET", "/stats")[0] for _ in range(10)]
                reloads = []
                for tag in range(1, 21):
                    with open(cfg, "w") as f:
                        f.write(config(routes, tag))
                    reloads.append(json.loads(admin("POST", "/reload")[1])["duration_ms"])
                cost[routes] = {
                    "metrics_ms": 1e3 * med([s[0] for s in scrape]),
                    "metrics_bytes": len(scrape[0][1]),
                    "stats_ms": 1e3 * med(stats),
                    "reload_ms": med(reloads),
                    "reload_max_ms": max(reloads),
                }
            finally:
                p.send_signal(signal.SIGTERM)
                p.wait(10)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(10)
    print(f"\nOpen loop at {a.rate} req/s, 16 connections, {a.duration} per run, outrigger 1 worker on core "
          f"{a.proxy_core}, nginx upstream + outrigger-load on core {a.load_core}; median of {a.runs}:\n")
    print("| condition | achieved req/s | p50 us | p99 us | p99.9 us | max us | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rs in lat.items():
        print(f"| {name} | {med([r['operations_per_second'] for r in rs]):.0f} | "
              f"{med([r['latency_us']['p50'] for r in rs]):.0f} | {med([r['latency_us']['p99'] for r in rs]):.0f} | "
              f"{med([r['latency_us']['p99_9'] for r in rs]):.0f} | {med([r['latency_us']['max'] for r in rs]):.0f} | "
              f"{sum(sum(r['errors'].values()) for r in rs)} |")
    print("\n| routes | GET /metrics ms | /metrics bytes | GET /stats ms | reload ms (median of 20) | reload max ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for routes, c in cost.items():
        print(f"| {routes} | {c['metrics_ms']:.2f} | {c['metrics_bytes']} | {c['stats_ms']:.2f} | "
              f"{c['reload_ms']:.2f} | {c['reload_max_ms']:.2f} |")


if __name__ == "__main__":
    main()
