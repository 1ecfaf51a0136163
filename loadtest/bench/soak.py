#!/usr/bin/env python3
"""Soak (issue 16): mixed load through one proxy for a long time, with a
reload every second and an upstream endpoint that fails on a schedule;
reports failed requests per generator and the proxy's RSS and open
descriptors over time.

Load (all open loop, through the proxy):
  HTTP/1.1   outrigger-load http -R RATE
  HTTP/2     outrigger-load http --h2 -m 4 -R RATE
  HTTPS      outrigger-load http https://... (TLS listener) -R RATE/2, over
             HTTP/1.1 and over HTTP/2 (ALPN h2, -m 2)
  TCP        outrigger-load tcp --mode echo -c 4 (closed loop)
The HTTP cluster has two endpoints; the second is killed and restarted
every FLAP seconds (retry on connect-failure/reset, outlier detection on).
Every second the config is rewritten (a response header changes) and the
proxy reloads it through its file watch.

Usage: cargo build --release
       python3 loadtest/bench/soak.py [--minutes 10] [--rate 300] [--flap 15]
Needs: openssl (a self-signed certificate is made in a temporary directory).
"""
import argparse, json, os, signal, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REL = os.path.join(ROOT, "target", "release")
LOAD = os.path.join(REL, "outrigger-load")
PROXY_BIN = os.path.join(REL, "outrigger")
P_HTTP, P_TLS, P_TCP, P_ADMIN = 18701, 18702, 18703, 18704
UP_A, UP_B, UP_ECHO = 18711, 18712, 18713


def config(gen, d):
    return f"""[runtime]
workers = 2
io = "auto"
[admin]
address = "127.0.0.1:{P_ADMIN}"
[listeners.web]
address = "127.0.0.1:{P_HTTP}"
protocol = "http"
routes = "r"
[listeners.secure]
address = "127.0.0.1:{P_TLS}"
protocol = "http"
routes = "r"
tls = {{ cert = "{d}/cert.pem", key = "{d}/key.pem" }}
[listeners.tcp]
address = "127.0.0.1:{P_TCP}"
protocol = "tcp"
cluster = "echo"
[[routes.r]]
match.path_prefix = "/"
cluster = "web"
retry = {{ attempts = 2, on = ["connect-failure", "reset", "gateway-error"] }}
response_headers = {{ set = {{ "x-generation" = "{gen}" }} }}
[clusters.web]
endpoints = ["127.0.0.1:{UP_A}", "127.0.0.1:{UP_B}"]
max_idle_connections = 256
outlier_detection = {{ consecutive_gateway_errors = 3, base_ejection_time = "2s" }}
[clusters.echo]
endpoints = ["127.0.0.1:{UP_ECHO}"]
"""


def proc_stats(pid):
    rss = 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def serve_b():
    return subprocess.Popen([LOAD, "serve", "http", "--addr", f"127.0.0.1:{UP_B}", "--name", "b"],
                            stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=int, default=300)
    ap.add_argument("--flap", type=int, default=15)
    a = ap.parse_args()
    seconds = int(a.minutes * 60)
    d = tempfile.mkdtemp(prefix="soak-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    cfg = f"{d}/outrigger.toml"
    open(cfg, "w").write(config(0, d))
    procs = [
        subprocess.Popen([LOAD, "serve", "http", "--addr", f"127.0.0.1:{UP_A}", "--name", "a"],
                         stdout=subprocess.DEVNULL),
        subprocess.Popen([LOAD, "serve", "echo", "--addr", f"127.0.0.1:{UP_ECHO}"], stdout=subprocess.DEVNULL),
    ]
    b = serve_b()
    proxy = subprocess.Popen([PROXY_BIN, "run", "--config", cfg, "--log-level", "warn"],
                             stderr=open(f"{d}/proxy.log", "w"))
    time.sleep(1.5)
    dur = f"{seconds}s"
    gens = {
        "http1": [LOAD, "http", f"http://127.0.0.1:{P_HTTP}/", "-c", "8", "-R", str(a.rate), "-d", dur],
        "http2": [LOAD, "http", f"http://127.0.0.1:{P_HTTP}/", "--h2", "-m", "4", "-c", "2", "-R", str(a.rate),
                  "-d", dur],
        "https": [LOAD, "http", f"https://127.0.0.1:{P_TLS}/", "--insecure", "-c", "4", "-R",
                  str(a.rate // 2), "-d", dur],
        "https-h2": [LOAD, "http", f"https://127.0.0.1:{P_TLS}/", "--insecure", "--h2", "-m", "2", "-c", "2",
                     "-R", str(a.rate // 2), "-d", dur],
        "tcp": [LOAD, "tcp", f"127.0.0.1:{P_TCP}", "--mode", "echo", "-c", "4", "-d", dur],
    }
    running = {}
    for name, cmd in gens.items():
        running[name] = subprocess.Popen(cmd + ["--json", f"{d}/{name}.json"], stdout=subprocess.DEVNULL)
    samples, reloads, flaps = [], 0, 0
    start = time.time()
    b_down = False
    try:
        while time.time() - start < seconds + 2:
            time.sleep(1)
            t = time.time() - start
            reloads += 1
            tmp = f"{cfg}.tmp"
            open(tmp, "w").write(config(reloads, d))
            os.replace(tmp, cfg)
            if int(t) % a.flap == 0:
                if b_down:
                    b = serve_b()
                else:
                    b.kill()
                    b.wait()
                b_down = not b_down
                flaps += 1
            if int(t) % 5 == 0:
                rss, fds = proc_stats(proxy.pid)
                samples.append((round(t), rss, fds))
        for p in running.values():
            p.wait(timeout=60)
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=30)
        for p in procs + [b]:
            p.kill()
    print(f"soak: {seconds} s, {reloads} reloads, {flaps} endpoint flaps, config in {d}")
    print("| generator | operations | failed | by kind |")
    print("|---|---:|---:|---|")
    for name in gens:
        r = json.load(open(f"{d}/{name}.json"))
        errors = r.get("errors", {})
        statuses = r.get("statuses", {})
        non2xx = {k: v for k, v in statuses.items() if k != "2xx" and v}
        failed = sum(errors.values()) + sum(non2xx.values())
        print(f"| {name} | {r['operations']:,} | {failed:,} | {dict(errors, **non2xx)} |")
    rs = [s[1] for s in samples]
    fs = [s[2] for s in samples]
    print(f"RSS MB: first {rs[0]/1e6:.1f}, min {min(rs)/1e6:.1f}, max {max(rs)/1e6:.1f}, last {rs[-1]/1e6:.1f}")
    print(f"open fds: first {fs[0]}, min {min(fs)}, max {max(fs)}, last {fs[-1]}")
    print("samples (s, RSS MB, fds):", [(s[0], round(s[1] / 1e6, 1), s[2]) for s in samples[::6]])


if __name__ == "__main__":
    main()
