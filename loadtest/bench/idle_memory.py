#!/usr/bin/env python3
"""Memory per idle keep-alive HTTP connection: outrigger (1 worker) vs nginx
(1 worker) as the proxy, both in front of the same nginx upstream. N client
connections each send one request, read the response, and stay open; the
proxy's RSS (summed over its processes) is read before and 2.5 s after.

Usage: python3 loadtest/bench/idle_memory.py [--connections 5000]
Needs: cargo build --release; nginx; `ulimit -n` above 2 × connections.
"""
import argparse, os, resource, signal, socket, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NGINX = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def nginx(d, name, body, conns):
    os.makedirs(f"{d}/{name}", exist_ok=True)
    conf = f"{d}/{name}/nginx.conf"
    with open(conf, "w") as f:
        f.write(f"""daemon off; master_process off; worker_processes 1; pid {d}/{name}/pid; error_log stderr error;
worker_rlimit_nofile {conns * 3};
events {{ worker_connections {conns * 2 + 100}; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path {d}/{name}/b; proxy_temp_path {d}/{name}/p; fastcgi_temp_path {d}/{name}/f;
  uwsgi_temp_path {d}/{name}/u; scgi_temp_path {d}/{name}/s;
  {body} }}
""")
    return subprocess.Popen([NGINX, "-p", f"{d}/{name}", "-c", conf])


def hold(port, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"ok"):
            data += s.recv(4096)
        socks.append(s)
    return socks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--tcp-connections", type=int, default=3000)
    ap.add_argument("--tcp-batches", type=int, default=1,
                    help="hold this many batches of --tcp-connections relays, one after the other, "
                         "and report each (the first pays for pools and slabs growing to the peak)")
    ap.add_argument("--tcp-only", action="store_true",
                    help="measure only TCP relays, in a proxy that has served no HTTP connection "
                         "(whose freed memory would otherwise be reused and hide their cost)")
    ap.add_argument("--io", default="auto", help="outrigger's driver: auto, io_uring or epoll")
    a = ap.parse_args()
    n = a.connections
    resource.setrlimit(resource.RLIMIT_NOFILE, (n * 4, n * 4))
    d = tempfile.mkdtemp(prefix="outrigger-idle-")
    up = nginx(d, "up", 'server { listen 127.0.0.1:18500; location / { return 200 "ok"; } }', n)
    px = nginx(d, "px", """upstream up { server 127.0.0.1:18500; keepalive 64; }
      server { listen 127.0.0.1:18502; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } }""", n)
    cfg = f"{d}/o.toml"
    with open(cfg, "w") as f:
        f.write(f"""[runtime]
workers = 1
io = "{a.io}"
[admin]
address = "127.0.0.1:0"
[listeners.web]
address = "127.0.0.1:18501"
protocol = "http"
routes = "main"
max_connections = {n * 2}
idle_timeout = "300s"
[listeners.tcp]
address = "127.0.0.1:18503"
protocol = "tcp"
cluster = "up"
max_connections = {n * 2}
idle_timeout = "300s"
[[routes.main]]
match.path_prefix = "/"
cluster = "up"
[clusters.up]
endpoints = ["127.0.0.1:18500"]
circuit_breaker = {{ max_connections = {n * 2} }}
""")
    og = subprocess.Popen([f"{ROOT}/target/release/outrigger", "run", "--no-watch", "--config", cfg, "--log-level", "warn"],
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n * 4, n * 4)))
    time.sleep(1)
    try:
        http = () if a.tcp_only else (("outrigger", 18501, og.pid), ("nginx", 18502, px.pid))
        for name, port, pid in http:
            hold(port, 10)  # warm: pools, first allocations
            before = rss_kib(pid)
            socks = hold(port, n)
            # Outrigger returns freed heap within ~1 s (worker/memory.rs);
            # parking happens 200-300 ms after a response.
            time.sleep(2.5)
            after = rss_kib(pid)
            print(f"{name}: {n} idle keep-alive connections: RSS {before} -> {after} KiB, "
                  f"{1024 * (after - before) / n:.0f} bytes per connection")
            for s in socks:
                s.close()
            time.sleep(1.5)
        if http:
            print(f"outrigger open descriptors after the clients closed: {len(os.listdir(f'/proc/{og.pid}/fd'))}")
        # An idle TCP relay: the client sends one request through it and
        # reads the answer; both sides then stay open and silent.
        # Up to 4 descriptors each on io_uring (two sockets, a duplicate
        # of each for readiness waits): fewer of them under the fd limit.
        t = a.tcp_connections
        hold(18503, 10)
        held = []
        for batch in range(a.tcp_batches):
            before = rss_kib(og.pid)
            socks = hold(18503, t)
            # Relays park after 1 s idle; the buffers their bursts left in the
            # worker's pool decay by half a second (buffers.rs), and freed heap
            # is returned within ~1 s: read after 8 s.
            time.sleep(8)
            after = rss_kib(og.pid)
            print(f"outrigger tcp relay, batch {batch + 1}: {t} more idle relayed connections: "
                  f"RSS {before} -> {after} KiB, {1024 * (after - before) / t:.0f} bytes per connection")
            held += socks
        for s in held:
            s.close()
    finally:
        for p in (og, px, up):
            p.send_signal(signal.SIGTERM)
            p.wait(10)


if __name__ == "__main__":
    main()
