#!/usr/bin/env python3
"""A/B benchmark of outrigger builds (or drivers) on the same workloads.

Each variant is an outrigger binary with a runtime.io value, started at once
on its own port, all pinned to PROXY_CORE (one worker each; idle variants
cost nothing). The upstream (nginx, one worker, 128 B and 1 KiB responses)
and the load generators run on LOAD_CORE. Rounds interleave the variants;
medians are reported, with the proxy's CPU time per request from /proc.

Workloads:
  wrk   wrk -t1 -c64, 1 KiB responses, closed loop: req/s and CPU us/request
  open  outrigger-load http -R RATE -c 16, 1 KiB: p50/p99 from the intended
        send time, and CPU us/request at that fixed rate

Usage:
  python3 loadtest/bench/ab_bench.py --variant base=/tmp/tgt-base/release/outrigger:io_uring \
      --variant new=target/release/outrigger:io_uring --variant new-epoll=target/release/outrigger:epoll \
      [--runs 3] [--duration 5s] [--rate 20000]
Needs: nginx and wrk (apt-get install nginx-light wrk), cargo build --release.
"""
import argparse, json, os, re, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import cpu_seconds  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOAD = os.path.join(ROOT, "target", "release", "outrigger-load")


def start_nginx_upstream(d, core):
    return benchlib.start_nginx(d, core, f"""server {{ listen 127.0.0.1:18300;
    location = /128 {{ return 200 "{'x' * 128}"; }}
    location = /1024 {{ return 200 "{'x' * 1024}"; }} }}""")


def start_variant(d, name, binary, io, port, core):
    return benchlib.start_outrigger(binary, f"{d}/{name}.toml", io, port, "127.0.0.1:18300", core)


def wrk(url, duration, core):
    out = subprocess.run(["taskset", "-c", core, "wrk", "-t1", "-c64", f"-d{duration}", url],
                         check=True, capture_output=True, text=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def open_loop(url, duration, core, rate):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(["taskset", "-c", core, LOAD, "http", url, "-c", "16", "-t", "1", "-R", str(rate),
                        "-d", duration, "--warmup", "0s", "--json", out.name],
                       check=True, stdout=subprocess.DEVNULL)
        return json.load(open(out.name))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", action="append", required=True, help="NAME=BINARY:IO")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--proxy-core", default="1")
    ap.add_argument("--load-core", default="0")
    a = ap.parse_args()
    secs = float(a.duration.rstrip("s"))
    d = tempfile.mkdtemp(prefix="outrigger-ab-")
    procs = [start_nginx_upstream(d, a.load_core)]
    variants = {}
    for i, v in enumerate(a.variant):
        name, rest = v.split("=", 1)
        binary, io = rest.rsplit(":", 1)
        port = 18310 + i
        p = start_variant(d, name, binary, io, port, a.proxy_core)
        procs.append(p)
        variants[name] = (f"http://127.0.0.1:{port}/1024", p.pid)
    time.sleep(1.5)
    res = {n: {"wrk_rps": [], "wrk_cpu": [], "p50": [], "p99": [], "open_cpu": [], "achieved": []} for n in variants}
    try:
        for name, (url, _) in variants.items():  # warm-up
            wrk(url, "1s", a.load_core)
        for _ in range(a.runs):
            for name, (url, pid) in variants.items():
                c0 = cpu_seconds(pid)
                rps = wrk(url, a.duration, a.load_core)
                c1 = cpu_seconds(pid)
                res[name]["wrk_rps"].append(rps)
                res[name]["wrk_cpu"].append(1e6 * (c1 - c0) / (rps * secs))
            for name, (url, pid) in variants.items():
                c0 = cpu_seconds(pid)
                r = open_loop(url, a.duration, a.load_core, a.rate)
                c1 = cpu_seconds(pid)
                ops = max(r["operations"], 1)
                res[name]["p50"].append(r["latency_us"]["p50"])
                res[name]["p99"].append(r["latency_us"]["p99"])
                res[name]["achieved"].append(r["operations_per_second"])
                res[name]["open_cpu"].append(1e6 * (c1 - c0) / ops)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
    med = statistics.median
    print(f"\nruns={a.runs} duration={a.duration} proxy core={a.proxy_core} load+upstream core={a.load_core}\n")
    print(f"| variant | wrk -c64 1 KiB req/s | CPU us/req | -R {a.rate} -c16: achieved | p50 us | p99 us | CPU us/req |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in res.items():
        print(f"| {name} | {med(r['wrk_rps']):.0f} | {med(r['wrk_cpu']):.1f} | {med(r['achieved']):.0f} | "
              f"{med(r['p50']):.0f} | {med(r['p99']):.0f} | {med(r['open_cpu']):.1f} |")
    print("\nper run (wrk CPU us/req; open-loop p50 us):")
    for name, r in res.items():
        print(f"  {name}: {[round(x, 1) for x in r['wrk_cpu']]}; {r['p50']}")


if __name__ == "__main__":
    main()
