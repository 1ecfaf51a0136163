#!/usr/bin/env python3
"""Generator accuracy (load-tester issue): outrigger-load vs wrk against the
same nginx (one worker, core 1, 128 B `return 200`), both with one thread
and 64 connections on core 0, closed loop, interleaved runs; the CPU each
generator spends per request (from /proc for wrk, from its own report for
outrigger-load); then an open-loop run at a fixed rate whose sent count is
checked against nginx's access log.

Usage: python3 loadtest/bench/accuracy_bench.py [--runs 5] [--duration 5s] [--rate 20000]
Needs: cargo build --release; nginx and wrk.
"""
import argparse, json, os, re, signal, statistics, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOAD = os.path.join(ROOT, "target", "release", "outrigger-load")
NGINX = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"
TICK = os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--rate", type=int, default=20000)
    a = ap.parse_args()
    secs = float(a.duration.rstrip("s"))
    d = tempfile.mkdtemp(prefix="outrigger-accuracy-")
    log = f"{d}/access.log"
    conf = f"{d}/nginx.conf"
    with open(conf, "w") as f:
        f.write(f"""daemon off; master_process off; worker_processes 1; pid {d}/pid; error_log stderr error;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000;
  client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
  log_format bare '$request_uri';
  server {{ listen 127.0.0.1:18300; location = /128 {{ return 200 "{'x' * 128}"; }}
           location = /counted {{ access_log {log} bare buffer=64k; return 200 "{'x' * 128}"; }} }} }}
""")
    ngx = subprocess.Popen(["taskset", "-c", "1", NGINX, "-p", d, "-c", conf])
    time.sleep(0.5)
    res = {"wrk": [], "outrigger-load": []}
    cpu = {"wrk": [], "outrigger-load": []}
    try:
        for _ in range(a.runs):
            t0 = os.times()
            out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c64", f"-d{a.duration}",
                                  "http://127.0.0.1:18300/128"], check=True, capture_output=True, text=True).stdout
            t1 = os.times()
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            res["wrk"].append(rps)
            # wrk's CPU: children's user+sys time (wrk has no warm-up).
            cpu["wrk"].append(1e6 * ((t1.children_user - t0.children_user) + (t1.children_system - t0.children_system))
                              / (rps * secs))
            with tempfile.NamedTemporaryFile(suffix=".json") as j:
                subprocess.run(["taskset", "-c", "0", LOAD, "http", "http://127.0.0.1:18300/128", "-c", "64", "-t", "1",
                                "-d", a.duration, "--warmup", "1s", "--json", j.name], check=True, stdout=subprocess.DEVNULL)
                r = json.load(open(j.name))
            res["outrigger-load"].append(r["operations_per_second"])
            cpu["outrigger-load"].append(1e6 * r["generator_cpu_utilisation"] * r["threads"] * r["measured_seconds"]
                                         / max(r["operations"], 1))
        # Open loop: every request it reports sending reaches nginx, and the
        # count matches the rate (warm-up excluded from the report but not
        # from nginx's log, so -n is used: no warm-up, a fixed total).
        total = int(a.rate * secs)
        with tempfile.NamedTemporaryFile(suffix=".json") as j:
            subprocess.run(["taskset", "-c", "0", LOAD, "http", "http://127.0.0.1:18300/counted", "-c", "64", "-t", "1",
                            "-R", str(a.rate), "-n", str(total), "--json", j.name], check=True, stdout=subprocess.DEVNULL)
            o = json.load(open(j.name))
    finally:
        ngx.send_signal(signal.SIGTERM)
        ngx.wait(10)
    logged = sum(1 for _ in open(log))
    med = statistics.median
    w, g = med(res["wrk"]), med(res["outrigger-load"])
    print(f"\nClosed loop, 1 thread, 64 connections, nginx /128 on core 1, generator on core 0, {a.runs} interleaved runs of {a.duration}:\n")
    print("| generator | req/s (median) | runs | CPU us/req |")
    print("|---|---:|---|---:|")
    for n in res:
        print(f"| {n} | {med(res[n]):.0f} | {', '.join(f'{x:.0f}' for x in res[n])} | {med(cpu[n]):.2f} |")
    print(f"\noutrigger-load = {100 * g / w:.1f}% of wrk.")
    print(f"\nOpen loop -R {a.rate} -n {total}: reported {o['operations']} responses in {o['measured_seconds']:.2f} s "
          f"({o['operations_per_second']:.0f}/s), behind schedule {o['behind_schedule']}; nginx logged {logged} requests.")


if __name__ == "__main__":
    main()
