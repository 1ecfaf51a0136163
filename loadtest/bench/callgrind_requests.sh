#!/usr/bin/env bash
# Instructions a proxy build spends on keep-alive HTTP requests, counted by
# callgrind (deterministic: the same build and inputs give the same count,
# whatever else the machine does). epoll only: valgrind cannot run io_uring.
#
# usage: loadtest/bench/callgrind_requests.sh OUTRIGGER_BINARY [REQUESTS]
# Needs: valgrind, nginx, curl, target/release/outrigger-load.
# Prints callgrind's total of the worker thread (the busiest one; the
# control, admin and service threads' timed work would add noise that
# grows with the run's length) for start-up + 2,000 warm-up + REQUESTS
# (default 20,000) requests of 1 KiB through an nginx upstream; compare two
# builds.
set -euo pipefail
BIN=$1
N=${2:-20000}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
LOAD="$ROOT/target/release/outrigger-load"
D=$(mktemp -d)
NGINX=/usr/sbin/nginx; command -v nginx >/dev/null && NGINX=$(command -v nginx)
body=$(head -c 1024 /dev/zero | tr '\0' x)
cat > "$D/nginx.conf" <<EOT
daemon off; master_process off; worker_processes 1; pid $D/pid;
error_log stderr error;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $D/b; proxy_temp_path $D/p; fastcgi_temp_path $D/f; uwsgi_temp_path $D/u; scgi_temp_path $D/s;
  server { listen 127.0.0.1:18398; location = /1024 { return 200 "$body"; } } }
EOT
"$NGINX" -p "$D" -c "$D/nginx.conf" &
NP=$!
cat > "$D/c.toml" <<EOT
[runtime]
workers = 1
io = "epoll"
pin_workers = false
[admin]
address = "127.0.0.1:0"
[listeners.web]
address = "127.0.0.1:18399"
protocol = "http"
routes = "main"
[[routes.main]]
match.path_prefix = "/"
cluster = "up"
[clusters.up]
endpoints = ["127.0.0.1:18398"]
EOT
valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$D/cg.out" "$BIN" run --config "$D/c.toml" --no-watch --log-level error >"$D/log" 2>&1 &
VP=$!
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:18399/1024 && break; sleep 0.2; done
"$LOAD" http http://127.0.0.1:18399/1024 -c 8 -n 2000 >/dev/null
"$LOAD" http http://127.0.0.1:18399/1024 -c 8 -n "$N" >/dev/null
kill -TERM "$VP"; wait "$VP" || true
kill -TERM "$NP"; wait "$NP" || true
worker=$(for f in "$D"/cg.out-*; do grep -E '^totals' "$f" | awk '{print $2}'; done | sort -n | tail -1)
echo "$BIN: $worker instructions in the worker thread (start-up + 2000 + $N requests)"
rm -rf "$D"
