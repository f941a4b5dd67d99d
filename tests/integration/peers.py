#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Test peers for shunt's integration tests and demo.

Each server kind runs as its own process inside a pod's network namespace:

    peers.py KIND --name NAME --listen ADDR:PORT [--listen ...] [--lifetime S]

ADDR:PORT is "10.77.0.2:7000", "[fd77::2]:7000", "0.0.0.0:9000" or "[::]:9000"
(IPv6 sockets are v6-only, so "0.0.0.0:P" and "[::]:P" can be combined).
When every listener is up the process prints one line
    READY {"name": ..., "listen": [...]}
on stdout. It exits after --lifetime seconds (default 600) whatever happens,
so a forgotten server never outlives its test run for long.

Kinds:
  echo       echoes everything; half-closes its side after the client's EOF
  addr       sends one JSON line {"server", "peer", "local"} on accept, then echoes
  greet      server-first (like SMTP): sends "220 NAME ready\\r\\n" on accept, then echoes
  halfclose  reads until EOF, then sends "<byte count> <sha256 hex>\\n" and closes
  reset      sends --reset-after bytes, then resets the connection (SO_LINGER 0)
  stall      reads nothing for --stall seconds, then behaves like halfclose
  http       HTTP/1.1 with keep-alive; answers every request with JSON
             {"server", "host", "method", "path", "peer", "local"};
             GET /slow/<ms> delays the answer; GET /bytes/<n> answers n bytes
"""

import argparse
import asyncio
import fcntl
import hashlib
import json
import resource
import signal
import socket
import struct
import sys
import termios
import time

import httpbackend  # the HTTP/1.1 request parsing (this script's directory)


def parse_listen(spec):
    if spec.startswith("["):
        host, _, port = spec[1:].partition("]:")
        return socket.AF_INET6, host, int(port)
    host, _, port = spec.rpartition(":")
    return socket.AF_INET, host, int(port)


def make_listener(spec):
    family, host, port = parse_listen(spec)
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    s.setblocking(False)
    return s


def send_queue(sock):
    """Bytes sent on sock that the peer has not acknowledged yet."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def addr_of(sockname):
    return [sockname[0], sockname[1]]


class Peer:
    def __init__(self, args):
        self.name = args.name
        self.reset_after = args.reset_after
        self.stall = args.stall

    async def handle(self, kind, reader, writer):
        try:
            await getattr(self, "kind_" + kind)(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError, ValueError):
            pass
        finally:
            try:
                writer.close()
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _echo(self, reader, writer):
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def kind_echo(self, reader, writer):
        await self._echo(reader, writer)

    async def kind_addr(self, reader, writer):
        info = {
            "server": self.name,
            "peer": addr_of(writer.get_extra_info("peername")),
            "local": addr_of(writer.get_extra_info("sockname")),
        }
        writer.write((json.dumps(info) + "\n").encode())
        await writer.drain()
        await self._echo(reader, writer)

    async def kind_greet(self, reader, writer):
        writer.write(("220 %s ready\r\n" % self.name).encode())
        await writer.drain()
        await self._echo(reader, writer)

    async def kind_halfclose(self, reader, writer):
        h = hashlib.sha256()
        n = 0
        while True:
            data = await reader.read(262144)
            if not data:
                break
            n += len(data)
            h.update(data)
        writer.write(("%d %s\n" % (n, h.hexdigest())).encode())
        await writer.drain()

    async def kind_stall(self, reader, writer):
        # A slow reader: the sender must be held back, not buffered for.
        writer.transport.pause_reading()
        await asyncio.sleep(self.stall)
        writer.transport.resume_reading()
        await self.kind_halfclose(reader, writer)

    async def kind_reset(self, reader, writer):
        chunk = b"r" * 4096
        left = self.reset_after
        while left > 0:
            part = chunk[: min(left, len(chunk))]
            writer.write(part)
            left -= len(part)
        await writer.drain()
        sock = writer.get_extra_info("socket")
        # The reset comes after the bytes: once the peer acknowledged them
        # all (nothing left in the send queue), or after 5 s.
        deadline = time.monotonic() + 5
        while send_queue(sock) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def kind_http(self, reader, writer):
        peer = addr_of(writer.get_extra_info("peername"))
        local = addr_of(writer.get_extra_info("sockname"))
        while True:
            req = await httpbackend.read_head(reader, writer)
            if req is None:
                return
            method, path, version, headers = req
            await httpbackend.read_body(reader, headers)
            close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
            ctype = "application/json"
            if path.startswith("/slow/"):
                await asyncio.sleep(int(path[6:]) / 1000.0)
            if path.startswith("/bytes/"):
                body = b"x" * int(path[7:])
                ctype = "application/octet-stream"
            else:
                body = (
                    json.dumps(
                        {
                            "server": self.name,
                            "host": headers.get("host", ""),
                            "method": method,
                            "path": path,
                            "peer": peer,
                            "local": local,
                        }
                    )
                    + "\n"
                ).encode()
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                "X-Served-By: %s\r\n%s\r\n"
                % (ctype, len(body), self.name, "Connection: close\r\n" if close else "")
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
            if close:
                return


async def main(args):
    peer = Peer(args)
    servers = []
    for spec in args.listen:
        sock = make_listener(spec)
        srv = await asyncio.start_server(
            lambda r, w: peer.handle(args.kind, r, w), sock=sock, backlog=4096
        )
        servers.append(srv)
    print("READY " + json.dumps({"name": args.name, "listen": args.listen}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.lifetime)
    except asyncio.TimeoutError:
        print("peers: lifetime %s s reached, exiting" % args.lifetime, file=sys.stderr)
    for srv in servers:
        srv.close()


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("kind", choices=["echo", "addr", "greet", "halfclose", "stall", "reset", "http"])
    p.add_argument("--name", default="peer")
    p.add_argument("--listen", action="append", required=True)
    p.add_argument("--lifetime", type=float, default=600.0)
    p.add_argument("--reset-after", type=int, default=65536)
    p.add_argument("--stall", type=float, default=3.0)
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
