"""Pieces the benchmark scripts share: a pinned nginx, a pinned HAProxy, a
pinned outrigger with one HTTP listener in front of one upstream, and a
process's CPU time."""
import os, subprocess

TICK = os.sysconf("SC_CLK_TCK")
NGINX = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"


def cpu_seconds(pid):
    """User + system CPU seconds of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start_nginx(d, core, servers):
    """One nginx worker pinned to `core`, serving the `servers` blocks;
    its files live in directory `d`."""
    os.makedirs(d, exist_ok=True)
    conf = f"{d}/nginx.conf"
    with open(conf, "w") as f:
        f.write(f"""daemon off; master_process off; worker_processes 1; pid {d}/pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;
  uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
  {servers} }}
""")
    return subprocess.Popen(["taskset", "-c", core, NGINX, "-p", d, "-c", conf])


def start_outrigger(binary, cfg_path, io, port, upstream, core, route_extra="", cluster_extra=""):
    """One outrigger worker (not self-pinned) pinned to `core` by taskset,
    one HTTP listener on `port` routing everything to `upstream` (an
    address or a list of them); the extras are appended to the route and
    the cluster."""
    ups = upstream if isinstance(upstream, list) else [upstream]
    endpoints = ", ".join(f'"{u}"' for u in ups)
    with open(cfg_path, "w") as f:
        f.write(f"""[runtime]
workers = 1
io = "{io}"
pin_workers = false
[admin]
address = "127.0.0.1:0"
[listeners.web]
address = "127.0.0.1:{port}"
protocol = "http"
routes = "main"
[[routes.main]]
match.path_prefix = "/"
cluster = "up"
{route_extra}
[clusters.up]
endpoints = [{endpoints}]
max_idle_connections = 128
{cluster_extra}
""")
    return subprocess.Popen(["taskset", "-c", core, binary, "run", "--config", cfg_path, "--no-watch",
                             "--log-level", "warn"])


def start_haproxy(d, core, mode, proxies, extra_defaults=""):
    """HAProxy with one thread pinned to `core`, `mode` (http or tcp) in its
    defaults, then the `proxies` sections (frontends, backends); its config
    is written in directory `d`."""
    conf = f"{d}/haproxy.cfg"
    with open(conf, "w") as f:
        f.write(f"""global
  nbthread 1
defaults
  mode {mode}
  timeout connect 5s
  timeout client 30s
  timeout server 30s
{extra_defaults}
{proxies}
""")
    return subprocess.Popen(["taskset", "-c", core, "haproxy", "-f", conf, "-db"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
