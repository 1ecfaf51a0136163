#!/usr/bin/env python3
"""Multi-core scaling of the TCP proxy: workers 1, 2, 4, 8.

Layout on a 16-core machine: proxy workers on cores 0..W-1 (one each,
pinned by the proxy), the echo upstream on cores 8-11 (4 threads), the
load generator on cores 12-15 (4 threads). Each point is the median of
--runs runs; a direct (no proxy) baseline is measured the same way.

Usage: python3 loadtest/bench/scaling_bench.py --bin-dir target/release [--runs 3] [--duration 5s]
"""
import argparse, json, os, signal, statistics, subprocess, tempfile, threading, time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


SMALL = (os.cpu_count() or 1) < 16


def pinned(cores):
    """preexec_fn pinning a child to `cores` (no dependency on taskset).
    On machines with fewer than 16 cores (a smoke run) nothing is pinned."""
    if SMALL:
        return None
    return lambda: os.sched_setaffinity(0, cores)


def secs(d):
    return float(d[:-2]) / 1000 if d.endswith("ms") else float(d[:-1])


def run_load(bin_dir, addr, mode, size, conns, duration, pid):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [f"{bin_dir}/outrigger-load", "tcp", addr, "--mode", mode,
               "--size", size, "-c", str(conns), "-t", "4"] + ([] if SMALL else ["--cpus", "12,13,14,15"]) + [
               "-d", duration, "--warmup", "1s", "--json", out.name]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, preexec_fn=pinned(range(12, 16)))
        time.sleep(1.05)
        c0 = cpu_seconds(pid) if pid else 0
        time.sleep(secs(duration))
        c1 = cpu_seconds(pid) if pid else 0
        if p.wait() != 0:
            raise SystemExit("load failed: " + " ".join(cmd))
        r = json.load(open(out.name))
        r["proxy_cpu_s"] = c1 - c0
        return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--workers", default="1,2,4,8")
    a = ap.parse_args()
    ncpu = os.cpu_count()
    print(f"cores={ncpu} kernel={os.uname().release}")
    echo = subprocess.Popen([f"{a.bin_dir}/outrigger-load", "serve", "echo",
                             "--addr", "127.0.0.1:17100", "-t", "4"], stdout=subprocess.DEVNULL,
                            preexec_fn=pinned(range(8, 12)))
    time.sleep(0.5)
    workloads = [("echo 64B x256 conns", "echo", "64", 256),
                 ("transfer 64KiB x64 conns", "transfer", "64KiB", 64)]
    rows = []
    try:
        for name, mode, size, conns in workloads:
            rs = [run_load(a.bin_dir, "127.0.0.1:17100", mode, size, conns, a.duration, None)
                  for _ in range(a.runs)]
            rows.append((name, "direct", rs))
        for w in [int(x) for x in a.workers.split(",")]:
            cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
            cfg.write(f"""
[runtime]
workers = {w}
pin_workers = true
[listeners.l]
address = "127.0.0.1:17001"
protocol = "tcp"
cluster = "echo"
[clusters.echo]
endpoints = ["127.0.0.1:17100"]
""")
            cfg.close()
            proxy = subprocess.Popen([f"{a.bin_dir}/outrigger", "run",
                                      "--config", cfg.name, "--log-level", "info"],
                                     stderr=subprocess.PIPE, text=True, preexec_fn=pinned(range(w)))
            # Wait for the start-up line that names the driver.
            for line in proxy.stderr:
                if "workers started" in line or "falling back" in line:
                    print(line.strip(), flush=True)
                if "listening" in line:
                    break
            # Keep draining the proxy's log so it can never block on a full pipe.
            threading.Thread(target=lambda f=proxy.stderr: [None for _ in f], daemon=True).start()
            try:
                for name, mode, size, conns in workloads:
                    rs = [run_load(a.bin_dir, "127.0.0.1:17001", mode, size, conns, a.duration, proxy.pid)
                          for _ in range(a.runs)]
                    rows.append((name, f"{w} worker(s)", rs))
            finally:
                proxy.send_signal(signal.SIGTERM)
                proxy.wait(10)
                os.unlink(cfg.name)
    finally:
        echo.terminate()
        echo.wait(10)
    med = statistics.median
    print(f"\nruns={a.runs} duration={a.duration}; proxy on cores 0..W-1, echo on 8-11, load on 12-15\n")
    print("| workload | target | ops/s | MiB/s | p50 us | p99 us | proxy CPU (cores busy) | gen CPU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, target, rs in rows:
        ops = med([r["operations_per_second"] for r in rs])
        mib = med([r["mebibytes_per_second"] for r in rs])
        p50 = med([r["latency_us"]["p50"] for r in rs])
        p99 = med([r["latency_us"]["p99"] for r in rs])
        busy = med([r["proxy_cpu_s"] / secs(a.duration) for r in rs])
        gen = med([r["generator_cpu_utilisation"] for r in rs])
        busy_s = "-" if target == "direct" else f"{busy:.2f}"
        print(f"| {name} | {target} | {ops:.0f} | {mib:.0f} | {p50:.0f} | {p99:.0f} | {busy_s} | {100*gen:.0f}% |")


if __name__ == "__main__":
    main()
