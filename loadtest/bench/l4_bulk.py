#!/usr/bin/env python3
"""L4 bulk throughput through the TCP relay against a direct connection and
against nginx (stream) and HAProxy (mode tcp) relaying the same way
(performance issue, point 3): iperf3, one stream and eight, rounds
interleaved, medians. Every proxy runs one worker (thread, process) pinned
to core 1; iperf3's client and server share core 0 in every case, the
direct one included. Reported per target: Gbit/s, the fraction of direct,
the proxy's CPU (% of its core over the run) and core 0's busy share.

Usage: python3 loadtest/bench/l4_bulk.py [--runs 3] [--seconds 3] [--streams 1,8]
         [--bin before=OLD_BINARY] [--modes io_uring:auto,io_uring:never,epoll:auto]
         [--no-peers]
       python3 loadtest/bench/l4_bulk.py --buffer-sizes 65536,262144,1048576
  (the second form compares `runtime.buffer_size` values for the buffered
  relay instead: io_uring, splice = "never", one target per size)
Needs: iperf3, cargo build --release; nginx with the stream module
(Debian: libnginx-mod-stream) and haproxy for the peers.
"""
import argparse, json, os, shutil, signal, statistics, subprocess, tempfile, time

from benchlib import NGINX, cpu_seconds, start_haproxy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = f"{ROOT}/target/release/outrigger"
SERVER_PORT = 18700
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def outrigger(d, name, binary, io, splice, port, buffer_size=None):
    cfg = f"{d}/{name}.toml"
    with open(cfg, "w") as f:
        f.write(f"""[runtime]
workers = 1
io = "{io}"
pin_workers = false
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
    return subprocess.Popen(["taskset", "-c", "1", binary, "run", "--no-watch", "--config", cfg,
                             "--log-level", "warn"])


def nginx(d, port):
    """nginx's stream proxy, one worker process (no master) on core 1."""
    conf = f"{d}/nginx.conf"
    with open(conf, "w") as f:
        f.write(f"""load_module {STREAM_MODULE};
daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;
error_log stderr error;
events {{ worker_connections 1024; }}
stream {{ server {{ listen 127.0.0.1:{port}; proxy_pass 127.0.0.1:{SERVER_PORT}; }} }}
""")
    return subprocess.Popen(["taskset", "-c", "1", NGINX, "-p", d, "-c", conf])


def haproxy(d, port):
    """HAProxy in mode tcp, one thread on core 1, its default buffers (no splice)."""
    return start_haproxy(d, "1", "tcp", f"""frontend f
  bind 127.0.0.1:{port}
  default_backend b
backend b
  server s1 127.0.0.1:{SERVER_PORT}""")


def core0_busy():
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu0 "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                return sum(v[:8]) - idle, sum(v[:8])
    return 0, 1


def iperf(port, seconds, streams, length, pid):
    c0, t0 = core0_busy()
    cpu0 = cpu_seconds(pid) if pid else 0.0
    start = time.monotonic()
    out = subprocess.run(["taskset", "-c", "0", "iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds),
                          "-P", str(streams), "-l", length, "-J"], capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - start
    cpu = (cpu_seconds(pid) - cpu0) / wall * 100 if pid else None
    c1, t1 = core0_busy()
    gbit = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
    return gbit, cpu, 100 * (c1 - c0) / max(1, t1 - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--length", default="128K", help="iperf3 -l (its default for TCP is 128K)")
    ap.add_argument("--bin", action="append", default=[],
                    help="NAME=PATH: an outrigger binary to measure (default: this tree's release build); "
                         "repeat to compare builds in the same interleaved rounds")
    ap.add_argument("--modes", default="io_uring:auto,io_uring:never,epoll:auto",
                    help="comma-separated IO:SPLICE listeners measured for each binary")
    ap.add_argument("--no-peers", action="store_true", help="leave out nginx and HAProxy")
    ap.add_argument("--buffer-sizes", default="",
                    help="comma-separated runtime.buffer_size values (bytes): one buffered io_uring "
                         "target each, instead of the splice-mode targets")
    a = ap.parse_args()
    bins = [tuple(b.split("=", 1)) for b in a.bin] or [("outrigger", BIN)]
    streams = [int(s) for s in a.streams.split(",")]
    d = tempfile.mkdtemp(prefix="outrigger-l4-")
    server = subprocess.Popen(["taskset", "-c", "0", "iperf3", "-s", "-p", str(SERVER_PORT)],
                              stdout=subprocess.DEVNULL)
    targets = [("direct", None, SERVER_PORT)]
    procs = []
    port = 18710
    if a.buffer_sizes:
        for size in (int(v) for v in a.buffer_sizes.split(",")):
            name = f"never-buf{size}"
            procs.append(outrigger(d, name, bins[0][1], "io_uring", "never", port, size))
            targets.append((name, procs[-1], port))
            port += 1
    else:
        for label, binary in bins:
            for mode in a.modes.split(","):
                io, splice = mode.split(":")
                name = f"{label} {io} {splice}"
                procs.append(outrigger(d, name.replace(" ", "-"), binary, io, splice, port))
                targets.append((name, procs[-1], port))
                port += 1
        if not a.no_peers:
            if os.path.exists(STREAM_MODULE):
                procs.append(nginx(d, port))
                targets.append(("nginx stream", procs[-1], port))
                port += 1
            else:
                print(f"nginx left out: no {STREAM_MODULE} (apt-get install libnginx-mod-stream)")
            if shutil.which("haproxy"):
                procs.append(haproxy(d, port))
                targets.append(("haproxy tcp", procs[-1], port))
                port += 1
            else:
                print("haproxy left out: not installed")
    time.sleep(1.0)
    results = {}
    try:
        for _ in range(a.runs):
            for n in streams:
                for name, p, tport in targets:
                    results.setdefault((name, n), []).append(
                        iperf(tport, a.seconds, n, a.length, p.pid if p else None))
    finally:
        for p in procs + [server]:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
    print(f"runs={a.runs} seconds={a.seconds} length={a.length}; iperf3 client and server on core 0, "
          "each proxy one worker on core 1; medians: Gbit/s (fraction of direct), proxy CPU % of its "
          "core, core 0 busy %")
    print()
    print("| target | " + " | ".join(f"{n} stream{'s' if n > 1 else ''}" for n in streams) + " |")
    print("|---|" + "---:|" * len(streams))
    for name, _, _ in targets:
        cells = []
        for n in streams:
            rows = results[(name, n)]
            g = statistics.median(r[0] for r in rows)
            direct = statistics.median(r[0] for r in results[("direct", n)])
            core0 = statistics.median(r[2] for r in rows)
            if rows[0][1] is None:
                cells.append(f"{g:.1f} (core 0 {core0:.0f}%)")
            else:
                cpu = statistics.median(r[1] for r in rows)
                cells.append(f"{g:.1f} ({g / direct:.2f}x), CPU {cpu:.0f}%, core 0 {core0:.0f}%")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
