"""A small closed-loop HTTP/1.1 load generator for `aifactory-serve` (no torch; asyncio, keep-alive).

Each client holds one connection and sends its next request when the previous answer arrives. Used
by the load test and benchmarks/runtime_bench.py; operators can point it at a node to check one.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    clients: int
    seconds: float = 0.0
    answers: list[tuple[int, str | None]] = field(default_factory=list)  # (status, decision id)
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def requests_per_second(self) -> float:
        return len(self.answers) / self.seconds if self.seconds else 0.0

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for status, _ in self.answers:
            counts[status] = counts.get(status, 0) + 1
        return counts


def request_bytes(host: str, path: str, body: dict[str, object], token: str | None) -> bytes:
    payload = json.dumps(body).encode()
    headers = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
    ]
    if token:
        headers.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + payload


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = next(
        (int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:")), 0
    )
    return status, await reader.readexactly(length)


async def _client(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    result: LoadResult,
    context: ssl.SSLContext | None,
    stop: asyncio.Event,
) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
    except OSError as exc:
        result.failures.append(f"connect: {exc}")
        return
    try:
        while time.monotonic() < deadline and not stop.is_set():
            sent = time.perf_counter()
            writer.write(request)
            try:
                status, body = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
                if not stop.is_set():
                    result.failures.append(f"{type(exc).__name__}: {exc}")
                return
            result.latencies.append(time.perf_counter() - sent)
            try:
                decision = json.loads(body).get("decision_id")
            except ValueError:
                decision = None
            result.answers.append((status, decision))
    finally:
        writer.close()


async def run_load(
    host: str,
    port: int,
    *,
    path: str,
    body: dict[str, object],
    token: str | None,
    clients: int,
    seconds: float,
    context: ssl.SSLContext | None = None,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """`clients` connections for `seconds`; `stop` ends it early (answers then in flight are dropped)."""
    result = LoadResult(clients)
    request = request_bytes(host, path, body, token)
    began = time.monotonic()
    halt = stop or asyncio.Event()
    await asyncio.gather(
        *(_client(host, port, request, began + seconds, result, context, halt) for _ in range(clients))
    )
    result.seconds = time.monotonic() - began
    return result
