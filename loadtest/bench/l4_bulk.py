#!/usr/bin/env python3
"""L4 bulk throughput through the TCP relay against a direct connection
(performance issue, point 5): iperf3, one stream and two, through Outrigger
with one worker (pinned to core 1) and with two workers (unpinned), each
splice mode, rounds interleaved, medians. iperf3's client and server share
core 0 in every case, the direct one included.

Usage: python3 loadtest/bench/l4_bulk.py [--runs 3] [--seconds 3]
       python3 loadtest/bench/l4_bulk.py --buffer-sizes 65536,262144,1048576
  (the second form compares `runtime.buffer_size` values instead of splice
  modes: one worker pinned to core 1, splice = "never", one target per size)
Needs: iperf3, cargo build --release.
"""
import argparse, json, os, signal, statistics, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = f"{ROOT}/target/release/outrigger"
SERVER_PORT = 18700


def proxy(d, name, workers, splice, port, buffer_size=None):
    cfg = f"{d}/{name}.toml"
    pin = "true" if workers == 1 else "false"
    with open(cfg, "w") as f:
        f.write(f"""[runtime]
workers = {workers}
pin_workers = {pin}
{f"buffer_size = {buffer_size}" if buffer_size else ""}
[admin]
address = "127.0.0.1:0"
[listeners.l4]
address = "127.0.0.1:{port}"
protocol = "tcp"
cluster = "iperf"
splice = "{splice}"
[clusters.iperf]
endpoints = ["127.0.0.1:{SERVER_PORT}"]
""")
    cmd = [BIN, "run", "--no-watch", "--config", cfg, "--log-level", "warn"]
    if workers == 1:
        cmd = ["taskset", "-c", "1"] + cmd
    p = subprocess.Popen(cmd)
    time.sleep(0.8)
    return p


def iperf(port, seconds, streams, length):
    out = subprocess.run(["taskset", "-c", "0", "iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds),
                          "-P", str(streams), "-l", length, "-J"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--buffer-sizes", default="",
                    help="comma-separated runtime.buffer_size values (bytes): one buffered, pinned "
                         "one-worker target each, instead of the splice-mode targets")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="outrigger-l4-")
    server = subprocess.Popen(["taskset", "-c", "0", "iperf3", "-s", "-p", str(SERVER_PORT)],
                              stdout=subprocess.DEVNULL)
    targets = [("direct", None, SERVER_PORT)]
    procs = []
    port = 18710
    if a.buffer_sizes:
        for size in (int(v) for v in a.buffer_sizes.split(",")):
            name = f"w1-never-buf{size}"
            procs.append(proxy(d, name, 1, "never", port, size))
            targets.append((name, procs[-1], port))
            port += 1
    else:
        for workers in (1, 2):
            for splice in ("auto", "never", "always"):
                name = f"w{workers}-{splice}"
                procs.append(proxy(d, name, workers, splice, port))
                targets.append((name, procs[-1], port))
                port += 1
    results = {}
    try:
        for _ in range(a.runs):
            for streams in (1, 2):
                for length in ("64K", "1M"):
                    for name, _, p in targets:
                        key = (name, streams, length)
                        results.setdefault(key, []).append(iperf(p, a.seconds, streams, length))
    finally:
        for p in procs + [server]:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
    print(f"runs={a.runs} seconds={a.seconds}; iperf3 client and server on core 0; "
          "w1 = one worker pinned to core 1, w2 = two workers unpinned; medians, Gbit/s")
    print()
    print("| target | 1 stream, 64K writes | 1 stream, 1M writes | 2 streams, 64K | 2 streams, 1M |")
    print("|---|---:|---:|---:|---:|")
    for name, _, _ in targets:
        cells = []
        for streams in (1, 2):
            for length in ("64K", "1M"):
                v = statistics.median(results[(name, streams, length)])
                direct = statistics.median(results[("direct", streams, length)])
                cells.append(f"{v:.1f} ({v / direct:.2f}x)")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
