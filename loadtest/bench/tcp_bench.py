#!/usr/bin/env python3
"""TCP benchmark of the foundation issue: throughput and ping-pong latency,
direct vs through Outrigger (buffered, splice, auto), with proxy CPU time.

Layout (as the issue asks): one proxy worker pinned to PROXY_CORE; the echo
upstream and the load generator on LOAD_CORE. Runs are interleaved
(direct, never, always, auto, direct, ...) and medians reported.

Usage: python3 loadtest/bench/tcp_bench.py [--runs 5] [--duration 5s] [--io auto]
       [--proxy-core 1] [--load-core 0] [--workers 1] [--only echo]
Needs: cargo build --release (target/release/outrigger and outrigger-load).
"""
import argparse, json, os, signal, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def seconds(d):
    return float(d[:-2]) / 1000 if d.endswith("ms") else float(d[:-1])


def load(addr, mode, size, conns, duration, io, core, threads, proxy_pid):
    """Run one load; returns its JSON report plus the proxy's CPU seconds
    sampled over the measured window only (after the 1 s warm-up)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = ["taskset", "-c", core, f"{BIN}/outrigger-load", "tcp", addr, "--mode", mode,
               "--size", size, "-c", str(conns), "-t", str(threads), "-d", duration,
               "--warmup", "1s", "--io", io, "--json", out.name]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        time.sleep(1.05)
        c0 = cpu_seconds(proxy_pid)
        time.sleep(seconds(duration))
        c1 = cpu_seconds(proxy_pid)
        if p.wait() != 0:
            raise SystemExit(f"load failed: {' '.join(cmd)}")
        r = json.load(open(out.name))
        r["proxy_cpu_s"] = c1 - c0
        return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--io", default="auto")
    ap.add_argument("--proxy-core", default="1")
    ap.add_argument("--load-core", default="0")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--only", default="", help="run only the workloads whose name contains this (e.g. echo)")
    ap.add_argument("--load-threads", type=int, default=1)
    ap.add_argument("--listener-extra", default="",
                    help="TOML lines added to each listener (e.g. 'splice_pipe_size = 65536')")
    ap.add_argument("--outrigger", default=f"{BIN}/outrigger", help="the proxy binary (another build, say)")
    a = ap.parse_args()
    io_cfg = {"auto": "auto", "io-uring": "io_uring", "epoll": "epoll"}[a.io]
    cfg = f"""
[runtime]
workers = {a.workers}
io = "{io_cfg}"
[listeners.never]
address = "127.0.0.1:17001"
protocol = "tcp"
cluster = "echo"
splice = "never"
{a.listener_extra}
[listeners.always]
address = "127.0.0.1:17002"
protocol = "tcp"
cluster = "echo"
splice = "always"
{a.listener_extra}
[listeners.auto]
address = "127.0.0.1:17003"
protocol = "tcp"
cluster = "echo"
splice = "auto"
{a.listener_extra}
[clusters.echo]
endpoints = ["127.0.0.1:17100"]
"""
    cfg_file = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg_file.write(cfg)
    cfg_file.close()
    echo = subprocess.Popen(["taskset", "-c", a.load_core, f"{BIN}/outrigger-load", "serve", "echo",
                             "--addr", "127.0.0.1:17100", "--io", a.io], stdout=subprocess.DEVNULL)
    proxy = subprocess.Popen(["taskset", "-c", a.proxy_core, a.outrigger, "run", "--config",
                              cfg_file.name, "--log-level", "warn"])
    time.sleep(1.0)
    targets = {"direct": "127.0.0.1:17100", "never": "127.0.0.1:17001",
               "always": "127.0.0.1:17002", "auto": "127.0.0.1:17003"}
    workloads = [
        ("transfer 64KiB x16 conns", "transfer", "64KiB", 16),
        ("transfer 16MiB x4 conns", "transfer", "16MiB", 4),
        ("echo 64B x1 conn", "echo", "64", 1),
        ("echo 64B x64 conns", "echo", "64", 64),
    ]
    workloads = [w for w in workloads if a.only in w[0]]
    results = {}
    try:
        for (name, mode, size, conns) in workloads:
            for _ in range(a.runs):
                for t, addr in targets.items():
                    r = load(addr, mode, size, conns, a.duration, a.io, a.load_core,
                             a.load_threads, proxy.pid)
                    gib = r["bytes"] / 2**30
                    # echo/transfer move each byte both ways through the proxy.
                    r["proxy_cpu_s_per_gib"] = r["proxy_cpu_s"] / (2 * gib) if gib > 0 and t != "direct" else None
                    r["proxy_cpu_us_per_op"] = 1e6 * r["proxy_cpu_s"] / r["operations"] if r["operations"] and t != "direct" else None
                    results.setdefault(name, {}).setdefault(t, []).append(r)
    finally:
        proxy.send_signal(signal.SIGTERM)
        echo.terminate()
        proxy.wait(10)
        echo.wait(10)
        os.unlink(cfg_file.name)
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    print(f"\nruns={a.runs} duration={a.duration} io={a.io} proxy core={a.proxy_core} "
          f"load+upstream core={a.load_core} workers={a.workers}\n")
    print("| workload | target | MiB/s | ops/s | p50 us | p99 us | % of direct | proxy CPU s/GiB | proxy CPU us/op |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, by_target in results.items():
        base = med([r["mebibytes_per_second"] for r in by_target["direct"]])
        for t, rs in by_target.items():
            mib = med([r["mebibytes_per_second"] for r in rs])
            ops = med([r["operations_per_second"] for r in rs])
            p50 = med([r["latency_us"]["p50"] for r in rs])
            p99 = med([r["latency_us"]["p99"] for r in rs])
            cpu = [r["proxy_cpu_s_per_gib"] for r in rs if r["proxy_cpu_s_per_gib"] is not None]
            cpu_s = f"{med(cpu):.3f}" if cpu else "-"
            per_op = [r["proxy_cpu_us_per_op"] for r in rs if r["proxy_cpu_us_per_op"] is not None]
            per_op_s = f"{med(per_op):.1f}" if per_op else "-"
            print(f"| {name} | {t} | {mib:.0f} | {ops:.0f} | {p50:.0f} | {p99:.0f} | {100*mib/base:.0f}% | {cpu_s} | {per_op_s} |")


if __name__ == "__main__":
    sys.exit(main())
