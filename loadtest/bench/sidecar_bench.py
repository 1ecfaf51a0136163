#!/usr/bin/env python3
"""The cost of interception (issue 13): a client in one network namespace,
a server in another (veth pair), at a fixed rate (outrigger-load http -R,
latency from the intended send time):

- direct: client -> server;
- outbound: the client's namespace intercepts (outrigger iptables) and its
  Outrigger (transparent auto listener, original_destination cluster)
  forwards;
- outbound + inbound: the server's namespace intercepts inbound too and
  its own Outrigger forwards to the local server, as between two meshed
  pods.

Then detection time per protocol from the auto listener's histogram.
Needs root, release binaries, iptables. Usage (median of --runs):
  sudo python3 loadtest/bench/sidecar_bench.py [--runs 3] [--rate 5000] [--duration 5s]"""
import argparse, json, os, statistics, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release")
C, S = "orb-client", "orb-server"
CONFIG = """[runtime]
workers = 1
pin_workers = false
[admin]
address = "127.0.0.1:9901"
[listeners.outbound]
address = "[::]:15001"
protocol = "auto"
routes = "r"
cluster = "pass"
original_destination = true
[listeners.inbound]
address = "[::]:15006"
protocol = "auto"
routes = "r"
cluster = "pass"
original_destination = true
inbound = true
[[routes.r]]
match.path_prefix = "/"
cluster = "pass"
[clusters.pass]
discovery = "original_destination"
"""


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def setup():
    teardown()
    for ns in (C, S):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "orb-c", "type", "veth", "peer", "name", "orb-s")
    sh("ip", "link", "set", "orb-c", "netns", C)
    sh("ip", "link", "set", "orb-s", "netns", S)
    sh("ip", "-n", C, "addr", "add", "10.201.0.1/24", "dev", "orb-c")
    sh("ip", "-n", S, "addr", "add", "10.201.0.2/24", "dev", "orb-s")
    sh("ip", "-n", C, "link", "set", "orb-c", "up")
    sh("ip", "-n", S, "link", "set", "orb-s", "up")


def teardown():
    for ns in (C, S):
        sh("ip", "netns", "del", ns, check=False)


def spawn(ns, *args):
    return subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def proxy(ns, cfg, core):
    return spawn(ns, "taskset", "-c", core, "setpriv", "--reuid", "1337", "--regid", "1337", "--clear-groups",
                 f"{BIN}/outrigger", "run", "--no-watch", "-c", cfg)


def wait_ready(ns):
    sh("ip", "netns", "exec", ns, f"{BIN}/outrigger", "wait-ready", "--timeout", "10s")


def load(rate, duration, core):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        sh("ip", "netns", "exec", C, "taskset", "-c", core, f"{BIN}/outrigger-load", "http",
           "http://10.201.0.2:8080/", "-c", "16", "-t", "1", "-R", str(rate), "-d", duration, "--warmup", "1s",
           "--json", out.name)
        r = json.load(open(out.name))
    return r["operations_per_second"], r["latency_us"]["p50"], r["latency_us"]["p99"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--proxy-core", default="1")
    ap.add_argument("--load-core", default="0")
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    os.chmod(d, 0o755)
    cfg = f"{d}/sidecar.toml"
    with open(cfg, "w") as f:
        f.write(CONFIG)
    os.chmod(cfg, 0o644)
    results = {}
    try:
        setup()
        server = spawn(S, "taskset", "-c", a.load_core, f"{BIN}/outrigger-load", "serve", "http", "--addr",
                       "10.201.0.2:8080", "--body-size", "128")
        time.sleep(0.5)
        for _ in range(a.runs):
            for mode in ["direct", "outbound", "outbound + inbound"]:
                procs = []
                if mode != "direct":
                    sh("ip", "netns", "exec", C, f"{BIN}/outrigger", "iptables", "--apply", "--proxy-uid", "1337",
                       "--exclude-inbound-ports", "15001,15006,9901")
                    procs.append(proxy(C, cfg, a.proxy_core))
                    wait_ready(C)
                if mode == "outbound + inbound":
                    sh("ip", "netns", "exec", S, f"{BIN}/outrigger", "iptables", "--apply", "--proxy-uid", "1337",
                       "--exclude-inbound-ports", "15001,15006,9901")
                    procs.append(proxy(S, cfg, a.proxy_core))
                    wait_ready(S)
                results.setdefault(mode, []).append(load(a.rate, a.duration, a.load_core))
                # Proof that each proxy carried the traffic.
                for ns, listener in [(C, "outbound"), (S, "inbound")][:len(procs)]:
                    text = sh("ip", "netns", "exec", ns, "curl", "-s", "http://127.0.0.1:9901/metrics").stdout
                    seen = [l for l in text.splitlines()
                            if l.startswith(f'outrigger_listener_connections_total{{listener="{listener}"}}')]
                    print(f"{mode}: {ns} {seen}", flush=True)
                for p in procs:
                    p.terminate()
                    p.wait()
                for ns in (C, S):
                    sh("ip", "netns", "exec", ns, f"{BIN}/outrigger", "iptables", "--cleanup", check=False)
        # Detection time per protocol, on the client's auto listener.
        sh("ip", "netns", "exec", C, f"{BIN}/outrigger", "iptables", "--apply", "--proxy-uid", "1337")
        p = proxy(C, cfg, a.proxy_core)
        wait_ready(C)
        detect = {}
        for proto, code in [
            ("http1", "s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); s.recv(10)"),
            ("opaque", "s.sendall(b'\\x00\\x01hi'); s.recv(10)"),
            ("silent", "s.settimeout(1); s.recv(10) if False else time.sleep(0.4)"),
        ]:
            before = metrics(C)
            for _ in range(20):
                sh("ip", "netns", "exec", C, "python3", "-c",
                   f"import socket,time; s=socket.create_connection(('10.201.0.2',8080)); {code}", check=False)
            after = metrics(C)
            n = after[0] - before[0]
            detect[proto] = 1e6 * (after[1] - before[1]) / max(n, 1)
        p.terminate()
        p.wait()
        server.terminate()
    finally:
        teardown()
    print(f"| path | rate | achieved req/s | p50 µs | p99 µs | runs (p99) |")
    print("|---|---:|---:|---:|---:|---|")
    for mode, rs in results.items():
        med = lambda i: statistics.median(r[i] for r in rs)  # noqa: E731
        print(f"| {mode} | {a.rate} | {med(0):,.0f} | {med(1):.0f} | {med(2):.0f} | "
              f"{', '.join(str(r[2]) for r in rs)} |")
    print()
    print("| first bytes | mean detection time (µs), 20 connections |")
    print("|---|---:|")
    for proto, us in detect.items():
        print(f"| {proto} | {us:,.0f} |")


def metrics(ns):
    """(count, sum seconds) of the outbound listener's detection histogram."""
    text = sh("ip", "netns", "exec", ns, "curl", "-s", "http://127.0.0.1:9901/metrics").stdout
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith('outrigger_listener_detect_duration_seconds_count{listener="outbound"}'):
            count = float(line.split()[-1])
        if line.startswith('outrigger_listener_detect_duration_seconds_sum{listener="outbound"}'):
            total = float(line.split()[-1])
    return count, total


if __name__ == "__main__":
    main()
