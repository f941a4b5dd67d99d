#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""An HTTP/2 (h2c, prior knowledge) server that tells what it received, for
the header tests: python3-h2 on asyncio.

    h2echo.py --listen ADDR:PORT [--listen ...] [--name NAME] [--lifetime S]

Every request is answered once its stream ended, with a JSON object
{"server", "headers": [[name, value], ...] (every field as received, in
order, duplicates kept), "trailers" (the same), "body_len", "sha256"} of
the request. A request
with content-type application/grpc gets it the gRPC way: one
length-prefixed message, then trailers with grpc-status 0, so a grpcio
client calling any method gets the JSON as its reply bytes. GET /bytes/N
answers N bytes (a repeated pattern) as the client's flow-control windows
allow.
Prints "READY" once every listener is up; exits after --lifetime seconds.
"""

import argparse
import asyncio
import hashlib
import json
import socket
import struct

import h2.config
import h2.connection
import h2.events


class Conn(asyncio.Protocol):
    def __init__(self, name):
        self.name = name
        self.h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.streams = {}  # id -> [headers, sha256, length, trailers]
        self.sending = {}  # id -> bytes of a /bytes/N answer not sent yet
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.h2.initiate_connection()
        self.flush()

    def flush(self):
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def data_received(self, data):
        try:
            events = self.h2.receive_data(data)
        except Exception:  # a protocol error: h2 queued GOAWAY
            self.flush()
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self.streams[ev.stream_id] = [list(ev.headers), hashlib.sha256(), 0, []]
            elif isinstance(ev, h2.events.TrailersReceived):
                st = self.streams.get(ev.stream_id)
                if st:
                    st[3] = list(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                st = self.streams.get(ev.stream_id)
                if st:
                    st[1].update(ev.data)
                    st[2] += len(ev.data)
                # Give the window back at once: bodies of any size pass.
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.answer(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.streams.pop(ev.stream_id, None)
                self.sending.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.WindowUpdated):
                pass  # send_pending below
        self.send_pending()
        self.flush()

    def send_pending(self):
        for sid in list(self.sending):
            left = self.sending[sid]
            while left:
                n = min(left, self.h2.local_flow_control_window(sid),
                        self.h2.max_outbound_frame_size)  # fmt: skip
                if n <= 0:
                    break
                self.h2.send_data(sid, b"0123456789abcdef" * (n // 16) + b"x" * (n % 16))
                left -= n
            self.sending[sid] = left
            if not left:
                self.h2.end_stream(sid)
                del self.sending[sid]

    def answer(self, sid):
        headers, sha, n, trailers = self.streams.pop(sid)
        path = dict(headers).get(":path", "")
        if path.startswith("/bytes/"):
            size = int(path[7:])
            self.h2.send_headers(sid, [(":status", "200"), ("content-length", str(size))])
            self.sending[sid] = size
            return
        body = json.dumps(
            {
                "server": self.name,
                "headers": [[k, v] for k, v in headers],
                "trailers": [[k, v] for k, v in trailers],
                "body_len": n,
                "sha256": sha.hexdigest(),
            }
        ).encode() + b"\n"
        grpc = any(k == "content-type" and v.startswith("application/grpc") for k, v in headers)
        if grpc:
            self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
            self.h2.send_data(sid, struct.pack(">BI", 0, len(body)) + body)
            self.h2.send_headers(sid, [("grpc-status", "0")], end_stream=True)
        else:
            self.h2.send_headers(
                sid,
                [
                    (":status", "200"),
                    ("content-type", "application/json"),
                    ("content-length", str(len(body))),
                ],
            )
            self.h2.send_data(sid, body, end_stream=True)


def listener(spec):
    host, _, port = spec.rpartition(":")
    host = host.strip("[]")
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(1024)
    return s


async def main(args):
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(lambda: Conn(args.name), sock=listener(spec))
        for spec in args.listen
    ]
    print("READY", flush=True)
    await asyncio.sleep(args.lifetime)
    for s in servers:
        s.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--listen", action="append", required=True)
    p.add_argument("--name", default="h2echo")
    p.add_argument("--lifetime", type=float, default=600)
    asyncio.run(main(p.parse_args()))
