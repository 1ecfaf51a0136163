#!/usr/bin/env python3
"""Before a stop: compare this build's cost with the last recorded figures
and flag a regression beyond 5%.

Figures (both repeatable on a noisy VM, unlike CPU time):
  instructions/request  callgrind, epoll driver, 1 KiB keep-alive requests
                        through an nginx upstream, the worker thread only:
                        the difference between runs of 30,000 and of 10,000
                        requests (the median of 3 each), / 20,000 (start-up
                        cancels out); callgrind_requests.sh. One run of a
                        build varies by 1-2%, hence the medians.
  bytes/idle conn       idle_memory.py, 5,000 idle keep-alive connections,
                        median of 3 runs (io_uring, the default driver)

Usage:
  cargo build --release
  python3 loadtest/bench/regress.py            # compare with baseline.json
  python3 loadtest/bench/regress.py --record   # write the figures as the new baseline
Exit status 1 when a figure is more than 5% worse than the baseline.
Needs: valgrind, nginx, curl.
"""
import argparse, json, os, re, statistics, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BASELINE = os.path.join(HERE, "baseline.json")
LIMIT = 0.05


def instructions(n, runs=3):
    counts = []
    for _ in range(runs):
        out = subprocess.run([os.path.join(HERE, "callgrind_requests.sh"),
                              os.path.join(ROOT, "target", "release", "outrigger"), str(n)],
                             check=True, capture_output=True, text=True).stdout
        counts.append(int(re.search(r": (\d+) instructions", out).group(1)))
    return statistics.median(counts)


def idle_bytes():
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, os.path.join(HERE, "idle_memory.py"), "--connections", "5000"],
                             check=True, capture_output=True, text=True).stdout
        runs.append(int(re.search(r"outrigger: .*?, (\d+) bytes per connection", out).group(1)))
    return statistics.median(runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    figures = {
        "instructions_per_request": (instructions(30000) - instructions(10000)) / 20000,
        "bytes_per_idle_connection": idle_bytes(),
    }
    if a.record:
        with open(BASELINE, "w") as f:
            json.dump({"commit": commit, "figures": figures}, f, indent=2)
            f.write("\n")
        print(f"recorded as the baseline ({commit}): {figures}")
        return 0
    base = json.load(open(BASELINE))
    worse = []
    print(f"| figure | baseline ({base['commit']}) | now ({commit}) | change |")
    print("|---|---:|---:|---:|")
    for k, v in figures.items():
        b = base["figures"][k]
        change = (v - b) / b
        flag = "  REGRESSION" if change > LIMIT else ""
        if flag:
            worse.append(k)
        print(f"| {k} | {b:.0f} | {v:.0f} | {100 * change:+.1f}%{flag} |")
    if worse:
        print(f"\nworse than the baseline by more than {LIMIT:.0%}: {', '.join(worse)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
