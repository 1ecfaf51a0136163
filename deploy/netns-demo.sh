#!/usr/bin/env bash
# The whole sidecar picture on one host, with network namespaces (root):
#   app ns  (10.200.0.2): the "app" (curl) and Outrigger, with interception
#   srv ns  (10.200.0.1): a web server
# The app curls the server by its real address; the interception rules send
# the connection through Outrigger, which logs it and forwards it to where
# it was going. The server calls back into the app ns and is intercepted
# inbound the same way. Usage: sudo deploy/netns-demo.sh [path/to/outrigger]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/outrigger}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or pass the binary)"; exit 1; }
BIN=$(readlink -f "$BIN")
APP=or-demo-app SRV=or-demo-srv
LOG=/tmp/outrigger-transparent.log
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    ip netns del $APP 2>/dev/null || true
    ip netns del $SRV 2>/dev/null || true
}
trap cleanup EXIT
cleanup
rm -f $LOG
ip netns add $APP
ip netns add $SRV
ip link add or-demo-a type veth peer name or-demo-s
ip link set or-demo-a netns $APP
ip link set or-demo-s netns $SRV
ip -n $APP addr add 10.200.0.2/24 dev or-demo-a
ip -n $SRV addr add 10.200.0.1/24 dev or-demo-s
for ns in $APP $SRV; do ip -n $ns link set lo up; done
ip -n $APP link set or-demo-a up
ip -n $SRV link set or-demo-s up

echo "== interception rules in the app namespace (outrigger iptables --apply)"
ip netns exec $APP "$BIN" iptables --apply --proxy-uid 1337 --exclude-inbound-ports 15001,15006,9901
ip netns exec $APP iptables-save -t nat | grep OUTRIGGER

echo "== servers: one in each namespace"
ip netns exec $SRV python3 -m http.server 8080 --bind 10.200.0.1 --directory /tmp >/dev/null 2>&1 &
ip netns exec $APP python3 -m http.server 8080 --bind 10.200.0.2 --directory /tmp >/dev/null 2>&1 &

echo "== Outrigger in the app namespace, as UID 1337 (configs/transparent.toml)"
ip netns exec $APP setpriv --reuid 1337 --regid 1337 --clear-groups \
    "$BIN" run --no-watch -c configs/transparent.toml --log-level warn &
ip netns exec $APP "$BIN" wait-ready --admin 127.0.0.1:9901 --timeout 10s
sleep 0.5

echo "== the app calls the server by its real address; it does not know about the proxy"
ip netns exec $APP curl -s -o /dev/null -w "outbound: HTTP %{http_code}\n" http://10.200.0.1:8080/
echo "== the server calls the app"
ip netns exec $SRV curl -s -o /dev/null -w "inbound: HTTP %{http_code}\n" http://10.200.0.2:8080/
sleep 0.5
echo "== the access log proves both went through Outrigger"
cat $LOG
