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
The TLS listener's certificate and key are rotated every ROTATE seconds
the way Kubernetes updates a mounted secret: a new leaf (same CA, new
serial) is written into a fresh directory and the `..data` symlink that
cert.pem and key.pem point through is swapped atomically. A probe makes a
fresh TLS handshake (verifying against the CA) every PROBE seconds and
checks which certificate it was served: after each rotation the new one
must arrive, and no probe may fail.
Every second the config is rewritten (a response header changes) and the
proxy reloads it through its file watch.

Usage: cargo build --release
       python3 loadtest/bench/soak.py [--minutes 10] [--rate 300] [--flap 15] [--rotate 10]
Needs: openssl (a CA and leaf certificates are made in a temporary directory).
"""
import argparse, json, os, signal, socket, ssl, subprocess, tempfile, threading, time, urllib.request

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
tls = {{ cert = "{d}/tls/cert.pem", key = "{d}/tls/key.pem" }}
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


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(d):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-days", "2", "-subj", "/CN=soak CA")


def make_leaf(d, n):
    """Leaf number n, signed by the CA, in its own directory; returns its DER."""
    out = f"{d}/tls/..leaf{n}"
    os.makedirs(out)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{out}/key.pem", "-out", f"{out}/req.csr", "-subj", "/CN=localhost")
    open(f"{out}/ext", "w").write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", f"{out}/req.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
            "-set_serial", str(1000 + n), "-days", "2", "-extfile", f"{out}/ext", "-out", f"{out}/cert.pem")
    return ssl.PEM_cert_to_DER_cert(open(f"{out}/cert.pem").read())


def rotate_to(d, n):
    """Point ..data at leaf n atomically (a symlink renamed over the old one)."""
    tmp = f"{d}/tls/..data_tmp"
    os.symlink(f"..leaf{n}", tmp)
    os.replace(tmp, f"{d}/tls/..data")


class Probe(threading.Thread):
    """A fresh TLS handshake and one request every `every` seconds; records
    (time, the DER served, ok)."""

    def __init__(self, ca, every):
        super().__init__(daemon=True)
        self.ctx = ssl.create_default_context(cafile=ca)
        self.every, self.results, self.stop = every, [], False

    def run(self):
        while not self.stop:
            t = time.time()
            der, ok = None, False
            try:
                with socket.create_connection(("127.0.0.1", P_TLS), timeout=3) as raw:
                    with self.ctx.wrap_socket(raw, server_hostname="localhost") as s:
                        der = s.getpeercert(binary_form=True)
                        s.sendall(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
                        data = b""
                        while chunk := s.recv(4096):
                            data += chunk
                        ok = data.startswith(b"HTTP/1.1 200")
            except OSError as e:
                print(f"probe failed at {t:.1f}: {e}")
            self.results.append((t, der, ok))
            time.sleep(max(0, self.every - (time.time() - t)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=int, default=300)
    ap.add_argument("--flap", type=int, default=15)
    ap.add_argument("--rotate", type=int, default=10)
    ap.add_argument("--probe", type=float, default=0.5)
    a = ap.parse_args()
    seconds = int(a.minutes * 60)
    d = tempfile.mkdtemp(prefix="soak-")
    os.makedirs(f"{d}/tls")
    make_ca(d)
    leaves = [make_leaf(d, 0)]
    rotate_to(d, 0)
    for f in ("cert.pem", "key.pem"):
        os.symlink(f"..data/{f}", f"{d}/tls/{f}")
    rotations = []  # (time, leaf index)
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
        "https": [LOAD, "http", f"https://127.0.0.1:{P_TLS}/", "--ca", f"{d}/ca.pem", "-c", "4", "-R",
                  str(a.rate // 2), "-d", dur],
        "https-h2": [LOAD, "http", f"https://127.0.0.1:{P_TLS}/", "--ca", f"{d}/ca.pem", "--h2", "-m", "2",
                     "-c", "2",
                     "-R", str(a.rate // 2), "-d", dur],
        "tcp": [LOAD, "tcp", f"127.0.0.1:{P_TCP}", "--mode", "echo", "-c", "4", "-d", dur],
    }
    running = {}
    for name, cmd in gens.items():
        running[name] = subprocess.Popen(cmd + ["--json", f"{d}/{name}.json"], stdout=subprocess.DEVNULL)
    samples, reloads, flaps = [], 0, 0
    probe = Probe(f"{d}/ca.pem", a.probe)
    probe.start()
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
            if int(t) % a.rotate == 0:
                leaves.append(make_leaf(d, len(leaves)))
                rotate_to(d, len(leaves) - 1)
                rotations.append((time.time(), len(leaves) - 1))
            if int(t) % 5 == 0:
                rss, fds = proc_stats(proxy.pid)
                samples.append((round(t), rss, fds))
        for p in running.values():
            p.wait(timeout=60)
        probe.stop = True
        probe.join(timeout=5)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{P_ADMIN}/metrics", timeout=5).read().decode()
        reload_lines = [l for l in metrics.splitlines() if l.startswith("outrigger_config_reloads_total")]
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
    print("reloads as the proxy counted them:", "; ".join(reload_lines))
    # Certificate rotation: which leaf each probe saw, against which leaf was current.
    index = {der: i for i, der in enumerate(leaves)}
    failed = [r for r in probe.results if not r[2]]
    unknown = [r for r in probe.results if r[2] and r[1] not in index]
    def current(t):
        """The leaf that had been in place for 2 s at time t."""
        return max([0] + [n for at, n in rotations if at + 2 <= t])

    lag = []
    for at, n in rotations:
        later = [r for r in probe.results if r[0] >= at and r[1] in index and index[r[1]] >= n]
        if later:
            lag.append(later[0][0] - at)
    stale_after_2s = sum(1 for r in probe.results if r[1] in index and index[r[1]] < current(r[0]))
    seen = {index[r[1]] for r in probe.results if r[1] in index}
    lag.sort()
    print(f"certificate rotations: {len(rotations)} (leaves 1..{len(leaves) - 1}), probes {len(probe.results)}, "
          f"failed {len(failed)}, unknown certificate {len(unknown)}, leaves seen {len(seen)}/{len(leaves)}, "
          f"old leaf served 2 s or more after its replacement {stale_after_2s}")
    if lag:
        print(f"rotation to first handshake with the new leaf: median {lag[len(lag) // 2]:.2f} s, "
              f"max {lag[-1]:.2f} s (probe every {a.probe} s)")
    print("samples (s, RSS MB, fds):", [(s[0], round(s[1] / 1e6, 1), s[2]) for s in samples[::6]])


if __name__ == "__main__":
    main()
