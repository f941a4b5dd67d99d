#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A small real HTTP/1.1 server for the integration tests: keep-alive,
Content-Length and chunked request bodies, answers naming itself.

    httpbackend.py --listen 10.77.0.2:8081=ep0 --listen 10.77.0.3:8081=ep1 ...

Every listener answers as its NAME. Paths:
  /               JSON {"server", "method", "path", "headers", "fields",
                  "body_len", "conn"}: headers as received (lower-case names;
                  the last of a repeated one), fields every header line in
                  order ([name, value], duplicates kept), conn a
                  per-connection counter (shows keep-alive reuse)
  /slow/MS        the same after MS milliseconds
  /hang           never answers (reads until the client leaves)
  /bytes/N        N bytes of body, chunked, written as the client reads
  /status/CODE    an empty response with that status
  /close          answers with Connection: close and closes
  /badhead        a response head with a malformed header line
  /badchunk       a chunked response whose second chunk size is not hex
  /truncate       Content-Length 100000, 10 bytes, then close
  /upgrade        with "Upgrade: echo" (listed in Connection): 101, then
                  echoes raw bytes until the client's FIN, then closes;
                  without it: 426
  /drop-if-reused closes without an answer when the connection has served
                  a request before (a server closing a kept-alive
                  connection just as the next request arrives)
Prints "READY" once every listener is up; exits after --lifetime seconds.
"""

import argparse
import asyncio
import json
import os
import socket
import sys

CHUNK = 65536
BROKEN = {
    "/badhead": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Header\r\n\r\nok",
    "/badchunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
    "/truncate": b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789",
}


def parse_listen(spec):
    addr, _, name = spec.partition("=")
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    return host, int(port), name or addr


class Fields(dict):
    """Headers by lower-case name; .lines keeps every line in order."""

    def __init__(self):
        super().__init__()
        self.lines = []


async def read_head(reader, writer):
    """One request head: (method, path, version, headers by lower-case
    name, a Fields), or None at EOF or once a bad request line got its 400."""
    line = await reader.readline()
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        return None
    method, path, version = parts
    headers = Fields()
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
        headers.lines.append([k.strip().lower(), v.strip()])
    return method, path, version, headers


async def read_body(reader, headers):
    """Reads (and drops) a request body, Content-Length or chunked; returns
    its length."""
    te = headers.get("transfer-encoding", "").lower()
    if te:
        if te != "chunked":
            raise ValueError("transfer-encoding " + te)
        total = 0
        while True:
            line = await reader.readline()
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return total
            await reader.readexactly(size)
            await reader.readexactly(2)
            total += size
    n = int(headers.get("content-length", "0") or "0")
    if n:
        await reader.readexactly(n)
    return n


class Backend:
    def __init__(self, name):
        self.name = name
        self.conns = 0

    async def handle(self, reader, writer):
        self.conns += 1
        conn = self.conns
        try:
            await self.serve(reader, writer, conn)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def serve(self, reader, writer, conn):
        served = 0
        while True:
            req = await read_head(reader, writer)
            if req is None:
                return
            method, path, version, headers = req
            body_len = await read_body(reader, headers)
            close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
            if path == "/drop-if-reused" and served:
                return
            served += 1
            if path == "/upgrade":
                await self.upgrade(reader, writer, headers)
                return
            if path in BROKEN:
                writer.write(BROKEN[path])
                await writer.drain()
                return
            if path == "/hang":
                await reader.read()  # until the client (shuntd) gives up
                return
            if path.startswith("/slow/"):
                await asyncio.sleep(int(path[6:]) / 1000.0)
            if path == "/close":
                close = True
            if path.startswith("/bytes/"):
                await self.stream(writer, int(path[7:]), method == "HEAD")
                if close:
                    return
                continue
            status, body = 200, b""
            if path.startswith("/status/"):
                status = int(path[8:])
            else:
                body = (
                    json.dumps(
                        {
                            "server": self.name,
                            "method": method,
                            "path": path,
                            "headers": headers,
                            "fields": headers.lines,
                            "body_len": body_len,
                            "conn": conn,
                        }
                    )
                    + "\n"
                ).encode()
            head = "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
                status,
                len(body),
            )
            head += "X-Served-By: %s\r\n%s\r\n" % (self.name, "Connection: close\r\n" if close else "")
            writer.write(head.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
            if close:
                return

    async def upgrade(self, reader, writer, headers):
        conn = [t.strip().lower() for t in headers.get("connection", "").split(",")]
        if headers.get("upgrade", "").lower() != "echo" or "upgrade" not in conn:
            writer.write(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n"
            b"X-Served-By: " + self.name.encode() + b"\r\n\r\n"
        )
        await writer.drain()
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()

    async def stream(self, writer, n, head_only):
        writer.write(
            (
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                "Transfer-Encoding: chunked\r\nX-Served-By: %s\r\n\r\n" % self.name
            ).encode()
        )
        if head_only:
            await writer.drain()
            return
        block = b"x" * CHUNK
        left = n
        while left > 0:
            k = min(left, CHUNK)
            writer.write(b"%x\r\n" % k + block[:k] + b"\r\n")
            await writer.drain()  # the client's pace: nothing piles up here
            left -= k
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def spawn(pod, specs, lifetime=900):
    """For the tests: one httpbackend.py process in pod (shuntlib.Pod)
    serving every ADDR:PORT=NAME of specs, started and READY."""
    argv = [sys.executable, os.path.abspath(__file__), "--lifetime", str(lifetime)]
    for s in specs:
        argv += ["--listen", s]
    return pod.spawn_ready(argv, "httpbackend")


async def main(args):
    servers = []
    for spec in args.listen:
        host, port, name = parse_listen(spec)
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        b = Backend(name)
        servers.append(await asyncio.start_server(b.handle, sock=sock))
    print("READY", flush=True)
    await asyncio.sleep(args.lifetime)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--listen", action="append", required=True, help="ADDR:PORT=NAME")
    p.add_argument("--lifetime", type=float, default=600)
    try:
        asyncio.run(main(p.parse_args()))
    except KeyboardInterrupt:
        sys.exit(0)
