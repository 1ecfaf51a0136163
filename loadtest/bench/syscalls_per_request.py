#!/usr/bin/env python3
"""Kernel entries and io_uring work per proxied request: Outrigger on io_uring
and on epoll, and nginx, for the same keep-alive HTTP/1.1 requests (1 KiB
responses from an nginx upstream, 16 connections, closed loop).

Two passes per proxy, each over REQUESTS requests:
  strace -c -f -p PID      system calls by name (strace slows the proxy; the
                           counts, not the times, are what is read)
  perf record -p PID       io_uring tracepoints: operations submitted by
                           opcode (io_uring_submit_req), polls armed
                           (io_uring_poll_arm: an operation that found no data
                           and waits), operations punted to io-wq worker threads
                           (io_uring_queue_async_work), io_uring_enter calls

Usage: python3 loadtest/bench/syscalls_per_request.py [--requests 20000]
Needs: root (perf tracepoints, strace -p), nginx, strace, perf,
cargo build --release.
"""
import argparse, collections, os, re, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release")


def nginx(d, name, body):
    return benchlib.start_nginx(f"{d}/{name}", "0", body)


def outrigger(d, io, port):
    return benchlib.start_outrigger(f"{BIN}/outrigger", f"{d}/{io}.toml", io, port, "127.0.0.1:18700", "1")


def load(port, n):
    subprocess.run(["taskset", "-c", "0", f"{BIN}/outrigger-load", "http", f"http://127.0.0.1:{port}/1024",
                    "-c", "16", "-n", str(n)], check=True, stdout=subprocess.DEVNULL)


def strace_counts(pid, port, n):
    out = tempfile.NamedTemporaryFile(suffix=".strace", delete=False).name
    tr = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(pid)], stderr=subprocess.DEVNULL)
    time.sleep(1)
    load(port, n)
    tr.send_signal(signal.SIGINT)
    tr.wait(30)
    counts = {}
    for line in open(out):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if m:
            counts[m.group(2)] = int(m.group(1))
    os.unlink(out)
    return counts


def perf_uring(pid, port, n):
    data = tempfile.NamedTemporaryFile(suffix=".perf", delete=False).name
    events = ["io_uring:io_uring_submit_req", "io_uring:io_uring_poll_arm",
              "io_uring:io_uring_queue_async_work", "syscalls:sys_enter_io_uring_enter"]
    args = ["perf", "record", "-q", "-o", data, "-p", str(pid)]
    for e in events:
        args += ["-e", e]
    pr = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    load(port, n)
    pr.send_signal(signal.SIGINT)
    pr.wait(30)
    script = subprocess.run(["perf", "script", "-i", data], capture_output=True, text=True).stdout
    os.unlink(data)
    counts = collections.Counter()
    for line in script.splitlines():
        if "io_uring_submit_req" in line:
            m = re.search(r"opcode (\w+)", line)
            counts["submit " + (m.group(1) if m else "?")] += 1
        elif "io_uring_poll_arm" in line:
            counts["poll armed"] += 1
        elif "io_uring_queue_async_work" in line:
            counts["io-wq punt"] += 1
        elif "sys_enter_io_uring_enter" in line:
            counts["io_uring_enter"] += 1
    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    a = ap.parse_args()
    n = a.requests
    d = tempfile.mkdtemp(prefix="outrigger-syscalls-")
    procs = [nginx(d, "up", 'server { listen 127.0.0.1:18700; location = /1024 { return 200 "%s"; } }' % ("x" * 1024))]
    procs.append(nginx(d, "px", """upstream up { server 127.0.0.1:18700; keepalive 64; }
      server { listen 127.0.0.1:18703; location / { proxy_pass http://up; proxy_http_version 1.1;
      proxy_set_header Connection ""; } }"""))
    procs.append(outrigger(d, "io_uring", 18701))
    procs.append(outrigger(d, "epoll", 18702))
    time.sleep(1.5)
    targets = [("outrigger io_uring", 18701, procs[2].pid), ("outrigger epoll", 18702, procs[3].pid),
               ("nginx", 18703, procs[1].pid)]
    results = {}
    try:
        for name, port, pid in targets:
            load(port, 2000)  # warm: pools, first allocations
            sc = strace_counts(pid, port, n)
            pu = perf_uring(pid, port, n) if "io_uring" in name else {}
            results[name] = (sc, pu)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
    print(f"\nper request, {n} keep-alive requests of 1 KiB, 16 connections, closed loop\n")
    names = sorted({k for sc, _ in results.values() for k in sc if k != "total"})
    print("| per request | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for k in names + ["total"]:
        row = [f"{results[t][0].get(k, 0) / n:.2f}" for t in results]
        if any(v != "0.00" for v in row):
            print(f"| syscall {k} | " + " | ".join(row) + " |")
    keys = sorted({k for _, pu in results.values() for k in pu})
    for k in keys:
        row = [f"{results[t][1].get(k, 0) / n:.2f}" if results[t][1] else "-" for t in results]
        print(f"| io_uring {k} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
