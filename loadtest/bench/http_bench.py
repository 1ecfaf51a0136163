#!/usr/bin/env python3
"""HTTP benchmark of the HTTP issue: Outrigger vs nginx as the proxy.

Layout: the proxy under test (one worker) pinned to PROXY_CORE; the upstream
(nginx, one worker) and the client (wrk, one thread, 64 keep-alive
connections) on LOAD_CORE. Responses of 128 B and 1 KiB. Runs interleave
(direct, outrigger, nginx, ...) and medians are reported, with proxy CPU
time per request from /proc.

Usage: python3 loadtest/bench/http_bench.py [--runs 5] [--duration 5s]
Needs: cargo build --release; nginx and wrk (apt-get install nginx-light wrk).
"""
import argparse, json, os, re, signal, statistics, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release")
TICK = os.sysconf("SC_CLK_TCK")
NGINX = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def nginx(d, name, core, body):
    os.makedirs(f"{d}/{name}", exist_ok=True)
    conf = f"{d}/{name}/nginx.conf"
    with open(conf, "w") as f:
        f.write(f"""daemon off; master_process off; worker_processes 1; pid {d}/{name}/pid;
error_log stderr error;
events {{ worker_connections 1024; }}
http {{ access_log off;
  client_body_temp_path {d}/{name}/b; proxy_temp_path {d}/{name}/p; fastcgi_temp_path {d}/{name}/f;
  uwsgi_temp_path {d}/{name}/u; scgi_temp_path {d}/{name}/s;
  keepalive_requests 1000000;
  {body} }}
""")
    return subprocess.Popen(["taskset", "-c", core, NGINX, "-p", f"{d}/{name}", "-c", conf])


def wrk(url, duration, core):
    out = subprocess.run(["taskset", "-c", core, "wrk", "-t1", "-c64", f"-d{duration}", "--latency", url],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    def lat(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 1, "ms": 1000, "s": 1e6}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": lat(50), "p99": lat(99), "non2xx": int(errors.group(1)) if errors else 0}


def outrigger_load(url, duration, core, extra):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(["taskset", "-c", core, f"{BIN}/outrigger-load", "http", url, "-c", "64", "-t", "1",
                        "-d", duration, "--warmup", "1s", "--json", out.name] + extra,
                       check=True, stdout=subprocess.DEVNULL)
        return json.load(open(out.name))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--proxy-core", default="1")
    ap.add_argument("--load-core", default="0")
    ap.add_argument("--io", default="auto", help="outrigger's runtime.io")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="outrigger-http-bench-")
    up = nginx(d, "upstream", a.load_core, """server { listen 127.0.0.1:18100;
      location = /128 { return 200 "%s"; }
      location = /1024 { return 200 "%s"; } }""" % ("x" * 128, "x" * 1024))
    px = nginx(d, "proxy", a.proxy_core, """upstream up { server 127.0.0.1:18100; keepalive 128; }
      server { listen 127.0.0.1:18002;
        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } }""")
    cfg = f"{d}/outrigger.toml"
    with open(cfg, "w") as f:
        f.write(f"""[runtime]
workers = 1
io = "{a.io}"
[listeners.web]
address = "127.0.0.1:18001"
protocol = "http"
routes = "main"
[[routes.main]]
match.path_prefix = "/"
cluster = "up"
[clusters.up]
endpoints = ["127.0.0.1:18100"]
max_idle_connections = 128
""")
    og = subprocess.Popen(["taskset", "-c", a.proxy_core, f"{BIN}/outrigger", "run", "--config", cfg,
                           "--log-level", "warn"])
    time.sleep(1)
    targets = {"direct": ("127.0.0.1:18100", None), "outrigger": ("127.0.0.1:18001", og.pid),
               "nginx": ("127.0.0.1:18002", px.pid)}
    results = {}
    try:
        for size in ["128", "1024"]:
            for _ in range(a.runs):
                for name, (addr, pid) in targets.items():
                    c0 = cpu_seconds(pid) if pid else 0
                    r = wrk(f"http://{addr}/{size}", a.duration, a.load_core)
                    c1 = cpu_seconds(pid) if pid else 0
                    secs = float(a.duration.rstrip("s"))
                    # CPU over the whole wrk run (it has no warm-up), per request.
                    r["cpu_us_per_req"] = 1e6 * (c1 - c0) / (r["rps"] * secs) if pid else None
                    results.setdefault(size, {}).setdefault(name, []).append(r)
        # Latency at a fixed rate of about half the lower maximum (open loop,
        # corrected for coordinated omission), and the generator's accuracy.
        med = statistics.median
        lower = min(med([r["rps"] for r in results["128"]["outrigger"]]),
                    med([r["rps"] for r in results["128"]["nginx"]]))
        rate = round(lower / 2, -2)
        fixed = {}
        accuracy = {"wrk": [], "outrigger-load": []}
        for _ in range(3):
            for name in ("outrigger", "nginx"):
                addr = targets[name][0]
                r = outrigger_load(f"http://{addr}/128", a.duration, a.load_core, ["-R", str(rate)])
                fixed.setdefault(name, []).append(r)
            accuracy["wrk"].append(wrk("http://127.0.0.1:18100/128", a.duration, a.load_core)["rps"])
            accuracy["outrigger-load"].append(
                outrigger_load("http://127.0.0.1:18100/128", a.duration, a.load_core, [])["operations_per_second"])
    finally:
        for p in (og, px, up):
            p.send_signal(signal.SIGTERM)
            p.wait(10)
    med = statistics.median
    print(f"\nruns={a.runs} duration={a.duration} proxy core={a.proxy_core} load+upstream core={a.load_core}; wrk -t1 -c64\n")
    print("| response | target | req/s | p50 us | p99 us | proxy CPU us/req | non-2xx |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for size, by in results.items():
        for name, rs in by.items():
            cpu = [r["cpu_us_per_req"] for r in rs if r["cpu_us_per_req"] is not None]
            cpu_s = f"{med(cpu):.1f}" if cpu else "-"
            print(f"| {size} B | {name} | {med([r['rps'] for r in rs]):.0f} | {med([r['p50'] for r in rs]):.0f} | "
                  f"{med([r['p99'] for r in rs]):.0f} | {cpu_s} | {sum(r['non2xx'] for r in rs)} |")
    print(f"\nOpen loop at {rate:.0f} req/s (about half the lower maximum), 128 B, 64 connections, "
          f"outrigger-load http -R, latency from the intended send time; median of 3:\n")
    print("| proxy | achieved req/s | p50 us | p99 us | p99.9 us | uncorrected p99 us |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rs in fixed.items():
        print(f"| {name} | {med([r['operations_per_second'] for r in rs]):.0f} | "
              f"{med([r['latency_us']['p50'] for r in rs]):.0f} | {med([r['latency_us']['p99'] for r in rs]):.0f} | "
              f"{med([r['latency_us']['p99_9'] for r in rs]):.0f} | "
              f"{med([r['latency_uncorrected_us']['p99'] for r in rs]):.0f} |")
    w, o = med(accuracy["wrk"]), med(accuracy["outrigger-load"])
    print(f"\nGenerator accuracy, closed loop, 1 thread, 64 connections, direct to nginx /128: "
          f"wrk {w:.0f} req/s, outrigger-load {o:.0f} req/s ({100 * o / w:.0f}% of wrk).")


if __name__ == "__main__":
    main()
