#!/usr/bin/env python3
"""A real gRPC server and client (grpcio, no generated stubs: methods take
and return raw bytes) for tests/http2.rs::grpcio_through_outrigger.

  grpc_peer.py server PORT [HOST]  serve test.Echo on HOST (127.0.0.1):PORT until killed
  grpc_peer.py client ADDR         call through ADDR, print one line per check
  grpc_peer.py calls ADDR          only the unary and the streaming call
"""
import sys
import time
import threading
from concurrent import futures

import grpc

flaky_calls = 0
lock = threading.Lock()


def unary(request, context):
    return b"echo:" + request


def stream(request, context):
    for i in range(int(request or b"3")):
        yield b"part-%d" % i


def slow(request, context):
    time.sleep(2)
    return b"late"


def flaky(request, context):
    global flaky_calls
    with lock:
        flaky_calls += 1
        n = flaky_calls
    if n % 2 == 1:
        context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
    return b"second try"


def serve(port, host="127.0.0.1"):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(channel, kind, method, request, timeout=5):
    try:
        if kind == "stream":
            stub = channel.unary_stream(method)
            return "ok " + ",".join(m.decode() for m in stub(request, timeout=timeout))
        stub = channel.unary_unary(method)
        return "ok " + stub(request, timeout=timeout).decode()
    except grpc.RpcError as e:
        return "error " + e.code().name


def client(addr):
    # The proxy is the target; the authority names the service.
    with grpc.insecure_channel(addr) as ch:
        print("unary", call(ch, "unary", "/test.Echo/Unary", b"hi"))
        print("stream", call(ch, "stream", "/test.Echo/Stream", b"4"))
        print("deadline", call(ch, "unary", "/test.Echo/Slow", b"", timeout=0.3))
        print("flaky", call(ch, "unary", "/test.Echo/Flaky", b""))
        print("missing", call(ch, "unary", "/test.Echo/Nope", b""))
        print("noroute", call(ch, "unary", "/other.Svc/M", b""))


def calls(addr):
    with grpc.insecure_channel(addr) as ch:
        print("unary", call(ch, "unary", "/test.Echo/Unary", b"hi"))
        print("stream", call(ch, "stream", "/test.Echo/Stream", b"4"))


if __name__ == "__main__":
    {"server": serve, "client": client, "calls": calls}[sys.argv[1]](*sys.argv[2:])
