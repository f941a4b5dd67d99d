#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""gRPC peers for shunt's HTTP/2 tests: a python3-grpcio server and client
with generic handlers and raw-bytes (identity) serializers, so no protoc and
no generated code are needed.

    grpcpeer.py server --name NAME --listen ADDR:PORT [--listen ...] [--lifetime S]
        prints "READY {...}" once listening. Methods:
          /shunt.Test/Unary  one reply per request
          /shunt.Test/Bidi   one reply per request message, in order
        Every reply is a JSON line {"server", "len", "sha256"} describing the
        request message, then a newline and x-reply-bytes filler bytes.
        Request metadata: x-sleep-ms (wait before answering), x-reply-bytes.

    grpcpeer.py client --target HOST:PORT unary --n N [--size B] [--sleep-ms MS]
                       [--timeout S] [--reply-bytes B]
    grpcpeer.py client --target HOST:PORT bidi --calls C --messages M [--size B]
                       [--pause-ms MS]
        All calls share ONE channel (one HTTP/2 connection). Prints one JSON
        object: {"servers": {name: n}, "codes": {code: n}, "details": [...],
        "calls": [...]} (for bidi, "calls" lists the servers each call saw;
        for unary, "latencies" each call's seconds).
"""

import argparse
import collections
import hashlib
import json
import os
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "shunt.Test"


def identity(b):
    return b


def describe(name, request, reply_bytes):
    head = json.dumps(
        {"server": name, "len": len(request), "sha256": hashlib.sha256(request).hexdigest()}
    ).encode()
    return head + b"\n" + b"x" * reply_bytes


def parse_reply(b):
    return json.loads(b.split(b"\n", 1)[0])


# ---------------------------------------------------------------- server


class Handlers:
    def __init__(self, name):
        self.name = name

    def _meta(self, context):
        md = dict(context.invocation_metadata())
        return (
            int(md.get("x-sleep-ms", "0")),
            int(md.get("x-reply-bytes", "0")),
        )

    def unary(self, request, context):
        sleep_ms, reply_bytes = self._meta(context)
        if sleep_ms:
            deadline = time.monotonic() + sleep_ms / 1000.0
            while time.monotonic() < deadline and context.is_active():
                time.sleep(0.01)
        return describe(self.name, request, reply_bytes)

    def bidi(self, request_iterator, context):
        sleep_ms, reply_bytes = self._meta(context)
        for request in request_iterator:
            if sleep_ms:
                time.sleep(sleep_ms / 1000.0)
            yield describe(self.name, request, reply_bytes)


def serve(args):
    h = Handlers(args.name)
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(
                h.unary, request_deserializer=identity, response_serializer=identity
            ),
            "Bidi": grpc.stream_stream_rpc_method_handler(
                h.bidi, request_deserializer=identity, response_serializer=identity
            ),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=64),
        handlers=[handler],
        options=[("grpc.max_receive_message_length", 64 << 20),
                 ("grpc.max_send_message_length", 64 << 20)],
    )
    for spec in args.listen:
        if server.add_insecure_port(spec) == 0:
            print("cannot listen on %s" % spec, file=sys.stderr)
            sys.exit(1)
    server.start()
    print("READY " + json.dumps({"name": args.name, "listen": args.listen}), flush=True)
    # Bounded life: a forgotten server never outlives its test run for long.
    server.wait_for_termination(timeout=args.lifetime)
    server.stop(0)


# ---------------------------------------------------------------- client


def channel(target):
    return grpc.insecure_channel(
        target,
        options=[
            ("grpc.enable_http_proxy", 0),
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
            # One connection for every call: the spread is shuntd's doing.
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )


def code_name(e):
    return e.code().name if isinstance(e, grpc.RpcError) else type(e).__name__


def run_unary(args, ch):
    call = ch.unary_unary(
        "/%s/Unary" % SERVICE, request_serializer=identity, response_deserializer=identity
    )
    payload = os.urandom(args.size)
    md = [("x-sleep-ms", str(args.sleep_ms)), ("x-reply-bytes", str(args.reply_bytes))]
    out = {"servers": collections.Counter(), "codes": collections.Counter(), "details": []}
    want = hashlib.sha256(payload).hexdigest()

    out["latencies"] = []  # seconds per call, in order

    def one(_):
        t0 = time.monotonic()
        try:
            r = parse_reply(call(payload, timeout=args.timeout, metadata=md))
            if r["len"] != len(payload) or r["sha256"] != want:
                return ("CORRUPT", None, "request arrived altered", time.monotonic() - t0)
            return ("OK", r["server"], None, time.monotonic() - t0)
        except grpc.RpcError as e:
            return (code_name(e), None, e.details(), time.monotonic() - t0)

    with futures.ThreadPoolExecutor(max_workers=args.parallel) as ex:
        for code, server, detail, took in ex.map(one, range(args.n)):
            out["latencies"].append(round(took, 4))
            out["codes"][code] += 1
            if server:
                out["servers"][server] += 1
            if detail and len(out["details"]) < 5:
                out["details"].append(detail)
    return out


def run_bidi(args, ch):
    call = ch.stream_stream(
        "/%s/Bidi" % SERVICE, request_serializer=identity, response_deserializer=identity
    )
    out = {"servers": collections.Counter(), "codes": collections.Counter(), "details": [],
           "calls": []}
    lock = threading.Lock()

    def one(i):
        msgs = [os.urandom(args.size) for _ in range(args.messages)]
        seen = []
        try:
            # Requests and replies interleave: each reply is read before the
            # next request is sent (a real ping-pong over one stream).
            got = threading.Semaphore(0)

            def gen():
                for k, m in enumerate(msgs):
                    if k and args.pause_ms:
                        time.sleep(args.pause_ms / 1000.0)
                    yield m
                    if not got.acquire(timeout=args.timeout):
                        return

            it = call(gen(), timeout=args.timeout)
            for k, reply in enumerate(it):
                r = parse_reply(reply)
                m = msgs[k]
                if r["len"] != len(m) or r["sha256"] != hashlib.sha256(m).hexdigest():
                    return ("CORRUPT", seen, "message %d arrived altered" % k)
                seen.append(r["server"])
                # progress for a test that acts between replies (stdout
                # carries only the result line)
                print("bidi reply %d of call %d" % (k, i), file=sys.stderr, flush=True)
                got.release()
            if len(seen) != len(msgs):
                return ("SHORT", seen, "%d of %d replies" % (len(seen), len(msgs)))
            return ("OK", seen, None)
        except grpc.RpcError as e:
            return (code_name(e), seen, e.details())

    with futures.ThreadPoolExecutor(max_workers=args.parallel) as ex:
        for code, seen, detail in ex.map(one, range(args.calls)):
            with lock:
                out["codes"][code] += 1
                out["calls"].append(seen)
                for s in set(seen):
                    out["servers"][s] += 1
                if detail and len(out["details"]) < 5:
                    out["details"].append(detail)
    return out


def client(args):
    ch = channel(args.target)
    try:
        out = run_unary(args, ch) if args.mode == "unary" else run_bidi(args, ch)
    finally:
        ch.close()
    print(json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--name", required=True)
    s.add_argument("--listen", action="append", required=True)
    s.add_argument("--lifetime", type=float, default=600)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--parallel", type=int, default=8)
    c.add_argument("--timeout", type=float, default=20)
    cm = c.add_subparsers(dest="mode", required=True)
    u = cm.add_parser("unary")
    u.add_argument("--n", type=int, default=1)
    u.add_argument("--size", type=int, default=16)
    u.add_argument("--sleep-ms", type=int, default=0)
    u.add_argument("--reply-bytes", type=int, default=0)
    b = cm.add_parser("bidi")
    b.add_argument("--calls", type=int, default=1)
    b.add_argument("--messages", type=int, default=4)
    b.add_argument("--size", type=int, default=16)
    b.add_argument("--pause-ms", type=int, default=0, help="before each message after the first")
    args = ap.parse_args()
    if args.role == "server":
        serve(args)
    else:
        client(args)


if __name__ == "__main__":
    main()
