"""The inference server's former hand-written HTTP/1.1 path, kept only as the benchmark's baseline.

    .venv/bin/python benchmarks/legacy_http.py [aifactory-serve options ...]

runs `aifactory-serve` with its HTTP layer swapped for the one it had before `runtime/http.py`
(`readuntil` on the blank line, `str.split` on the head, `int()` on Content-Length): the same
routing, authorization, decision log and batching, so that `runtime_bench.py --parts parsers`
measures the parser and the limits alone. It has none of the limits, timeouts or caps and refuses
nothing the old one did not: never serve with it. It lives in benchmarks/, not in the package.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aifactory.runtime import server as server_module  # noqa: E402
from aifactory.runtime.http import HttpServer, Request, Response  # noqa: E402
from aifactory.runtime.serve_cli import main  # noqa: E402


class LegacyHttpServer(HttpServer[Any]):
    """HttpServer's interface (start, close_all, inflight, idle) over the old parsing loop."""

    async def start(self, host: str, port: int) -> asyncio.Server:
        self.idle.set()
        return await asyncio.start_server(self.connection, host, port, limit=64 * 1024, backlog=1024)

    def close_all(self) -> None:
        for connection in list(self._connections):
            connection.writer.close()

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from aifactory.runtime.http import _Connection  # the set close_all walks

        address = str((writer.get_extra_info("peername") or ("?",))[0])
        tracked = _Connection(writer, address)
        self._connections.add(tracked)
        try:
            peer = await self.prepare(writer, address)
            if peer is None:
                return
            while not self.draining:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await self._write(writer, Response.json(431, {"error": "headers-too-large"}), False)
                    return
                self.inflight += 1
                self.idle.clear()
                try:
                    keep_alive = await self._exchange(head, reader, writer, peer)
                finally:
                    self.inflight -= 1
                    if not self.inflight:
                        self.idle.set()
                if not keep_alive or self.draining:
                    return
        finally:
            self._connections.discard(tracked)
            writer.close()

    async def _exchange(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any
    ) -> bool:
        started = asyncio.get_running_loop().time()
        try:
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, v in (line.split(":", 1) for line in header_lines if ":" in line)
            }
            length = int(headers.get("content-length", "0"))
        except ValueError:
            await self._write(writer, Response.json(400, {"error": "bad-request"}), False)
            return False
        if length > self.limits.max_body or length < 0 or "chunked" in headers.get("transfer-encoding", ""):
            await self._write(writer, Response.json(413, {"error": "body-too-large-or-chunked"}), False)
            return False
        body = await reader.readexactly(length) if length else b""
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        response = await self.handler(Request(method, target, headers, body), peer)
        await self._write(writer, response, keep_alive)
        self.events.answered(response.status, asyncio.get_running_loop().time() - started)
        return keep_alive

    async def _write(self, writer: asyncio.StreamWriter, response: Response, keep_alive: bool) -> None:
        writer.write(response.encode(keep_alive=keep_alive))
        try:
            await writer.drain()
        except ConnectionError:
            pass


if __name__ == "__main__":
    setattr(server_module, "HttpServer", LegacyHttpServer)  # noqa: B010 -- the baseline's one seam
    sys.exit(main(sys.argv[1:]))
