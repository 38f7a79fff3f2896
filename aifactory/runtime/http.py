"""HTTP/1.1 for the inference server: framing by llhttp (httptools), limits, timeouts, connection caps.

This module knows requests and connections, nothing of models, tokens, TLS or batching: the server
gives it a `prepare` hook (run once per accepted connection, e.g. the TLS handshake; it returns what
the handler should know about the peer, or None to drop the connection) and a `handler` (one request
in, one `Response` out).

Parsing is llhttp's (Node.js's parser, through `httptools`), in strict mode: it refuses a
`Content-Length` that is not plain digits, duplicated or beside a `Transfer-Encoding`, bad request
lines and header names. On top of it this module refuses, answering and then closing:

- any `Transfer-Encoding` (400): every client of this server sends a `Content-Length`, and a
  request that could be framed two ways is how requests get smuggled;
- a duplicated `Authorization` header (400): two credentials, one of which a proxy may have checked;
- a request target longer than `max_target` (414), a head (request line and headers) larger than
  `max_header_bytes` (431), a body larger than `max_body` (413);
- a connection past `max_connections_per_peer` from one address or `max_connections` in all (503,
  before anything is read), so that one client cannot exhaust the process's file descriptors.

Timeouts (each closes the connection without an answer): `header_timeout` from a request's first
byte (or, on a new connection, from its acceptance) to the end of its head; `body_timeout` from the
end of the head to the end of the body, and for writing an answer the client does not read;
`idle_timeout` on a keep-alive connection between requests. A sweeper task checks deadlines
`TICKS_PER_TIMEOUT` times per shortest timeout, so the hot path only stores a number per state
change (no timer handle per read).

A second listener may take connections from the front door (`start_front_door`): only from its
addresses, each opening with a PROXY protocol v2 header (`runtime.proxy_protocol`) whose client address
is then the connection's peer everywhere (the per-peer cap, the handler's peer). That listener accepts
its sockets itself and reads the header from each, byte-exact, before asyncio makes a transport of it
(`connect_accepted_socket`): no transport ever reads a byte of the header, and the client's TLS
handshake that follows it reaches `prepare` untouched. (Pausing a transport from `connection_made`
does not hold on Debian 12's Python 3.11.2, which starts reading anyway: the transport then took the
header's bytes, and some connections through the front door ended in a TLS handshake timeout.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import httptools

from aifactory.errors import AifactoryError, ProxyHeaderRefused
from aifactory.runtime import proxy_protocol

log = logging.getLogger(__name__)

REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
READ_SIZE = 64 * 1024
# Connections asyncio accepts in one event-loop turn (also the listen backlog). Refused connections are
# closed by their own task, which runs after the turn: this bounds the descriptors open beyond the caps.
ACCEPT_BATCH = 128
# Descriptors the process needs besides connections: the decision log and its heads, checkpoints,
# the listening socket, the event loop's own, and the accepted-but-not-yet-refused batch.
FD_HEADROOM = 256 + ACCEPT_BATCH
TICKS_PER_TIMEOUT = 10
# Draining: how long an idle keep-alive connection may still bring one request (answered, then closed);
# a client sending even once a second gets its last answer instead of a connection closed under it.
LAST_CALL_S = 2.0
LAST_CALL_POLL_S = 0.05


def nofile_limit(max_connections: int) -> int:
    """The `LimitNOFILE` a server with this connection cap needs (the runtime role writes it)."""
    return max_connections + FD_HEADROOM


@dataclass(frozen=True)
class HttpLimits:
    """Every limit of the HTTP layer and its default (docs/runtime.md, `aifactory-serve --help`)."""

    max_connections: int = 1024
    max_connections_per_peer: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 30.0
    max_header_bytes: int = 16 * 1024
    max_target: int = 2048
    max_body: int = 1 << 20

    def check(self) -> str | None:
        """What is wrong with these limits, or None."""
        if min(self.max_connections, self.max_connections_per_peer) < 1:
            return "connection caps must be at least 1"
        if min(self.header_timeout, self.body_timeout, self.idle_timeout) <= 0:
            return "timeouts must be more than 0 seconds"
        if min(self.max_header_bytes, self.max_target, self.max_body) < 1:
            return "size limits must be at least 1 byte"
        return None


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: Mapping[str, str]  # names in lower case; values latin-1 decoded
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  # close the connection after this answer

    @classmethod
    def json(
        cls, status: int, payload: Any, headers: Mapping[str, str] | None = None, *, close: bool = False
    ) -> Response:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return cls(status, body, headers=tuple((headers or {}).items()), close=close)

    def encode(self, *, keep_alive: bool) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Error')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: keep-alive" if keep_alive else "Connection: close",
        ]
        for name, value in self.headers:
            # Header values are the server's own (ids, methods); never let one end the head early.
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


class HttpEvents(Protocol):
    """What the HTTP layer reports (the server counts it in its metrics)."""

    def answered(self, status: int, seconds: float) -> None: ...

    def closed(self, reason: str) -> None: ...


PeerT = TypeVar("PeerT")
Handler = Callable[[Request, PeerT], Awaitable[Response]]
Prepare = Callable[[asyncio.StreamWriter, str], Awaitable[PeerT | None]]


class _Refused(AifactoryError):
    """Raised from a parser callback: answer `status` with `error`, then close (internal control flow
    out of httptools' callbacks; it becomes an HTTP answer, never reaches a command)."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error, code=error)
        self.status, self.error = status, error


@dataclass
class _Message:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    started: float


class _Parse:
    """The parser's callbacks for one connection: collects messages, enforces sizes."""

    __slots__ = (
        "limits", "ready", "in_head", "in_body", "started", "head_end", "_target", "_target_size",
        "_headers", "_head_size", "_fed_in_head", "_began_in_feed", "_body", "_body_size", "parser",
        "refusal", "continue_wanted",
    )  # fmt: skip

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.ready: deque[_Message] = deque()
        self.in_head = self.in_body = False
        self.started = self.head_end = 0.0
        self._target: list[bytes] = []
        self._target_size = self._head_size = self._body_size = self._fed_in_head = 0
        self._began_in_feed = False
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self.refusal: _Refused | None = None
        self.continue_wanted = False
        self.parser = httptools.HttpRequestParser(self)

    def feed(self, data: bytes) -> bool:
        """Parse `data`; False when the connection must end (after answering `refusal`, if any)."""
        self._began_in_feed = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An `Upgrade` request (h2c, websocket) is answered as plain HTTP/1.1, then the connection
            # closes: whatever follows its head is not HTTP/1.1.
            if self.ready:
                self.ready[-1].keep_alive = False
            return False
        except httptools.HttpParserError as error:
            if self.refusal is None:
                self.refusal = _Refused(400, "bad-request")
                log.debug("unparsable request: %s", error)
            return False
        if self.in_head:  # a head still incomplete: bound what llhttp holds of it between reads
            if self._began_in_feed:
                # The head began inside this read: what came before it in the read was earlier
                # (pipelined) requests', not this head's. Its bytes the parser delivered count now; what
                # it holds of a header still incomplete is at most this read, counted from the next.
                self._fed_in_head = self._target_size + self._head_size
            else:
                self._fed_in_head += len(data)
            if self._fed_in_head > self.limits.max_header_bytes:
                self.refusal = _Refused(431, "headers-too-large")
                return False
        return True

    def _refuse(self, status: int, error: str) -> None:
        self.refusal = _Refused(status, error)
        raise self.refusal

    # --- llhttp callbacks (names fixed by httptools) ---------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_head, self.started = True, time.monotonic()
        self._target, self._target_size, self._head_size, self._body_size = [], 0, 0, 0
        self._fed_in_head, self._began_in_feed = 0, True
        self._headers, self._body = {}, []

    def on_url(self, part: bytes) -> None:
        self._target_size += len(part)
        if self._target_size > self.limits.max_target:
            self._refuse(414, "target-too-long")
        self._target.append(part)

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        if key == "transfer-encoding":
            self._refuse(400, "transfer-encoding-refused")
        if key == "content-length":  # llhttp lets only digits through; this says so where it matters
            if not value.isdigit():
                self._refuse(400, "bad-content-length")
            if int(value) > self.limits.max_body:
                self._refuse(413, "body-too-large")
        if key == "authorization" and key in self._headers:
            self._refuse(400, "duplicate-authorization")
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.limits.max_header_bytes:
            self._refuse(431, "headers-too-large")
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        self.in_head, self.in_body, self.head_end = False, True, time.monotonic()
        # curl asks before sending a body over 1 KB, and waits a second for this answer otherwise
        self.continue_wanted = self._headers.get("expect", "").lower() == "100-continue"

    def on_body(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._body_size > self.limits.max_body:
            self._refuse(413, "body-too-large")
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        self.in_head = self.in_body = False
        parser = self.parser
        self.ready.append(
            _Message(
                parser.get_method().decode("ascii"),
                b"".join(self._target).decode("latin-1"),
                self._headers,
                b"".join(self._body),
                parser.should_keep_alive(),
                self.started,
            )
        )


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    peer: str
    deadline: float = math.inf  # time.monotonic() past which the sweeper closes it
    why: str = ""  # which timeout the deadline is (none while the server itself works on a request)

    def expire(self, deadline: float, why: str) -> None:
        self.deadline, self.why = deadline, why


class Listener(Protocol):
    """What the server closes when it drains: an asyncio.Server, or the front door's listener."""

    def close(self) -> None: ...


class FrontDoorListener:
    """The front door's listening socket and its accept loop: `sockets` and `close` as an asyncio.Server's
    (the server closes its listeners alike when it drains)."""

    def __init__(self, listener: socket.socket, accepting: asyncio.Task[None]) -> None:
        self._listener, self._accepting = listener, accepting

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._listener,)

    def close(self) -> None:
        """No new connection: stop accepting (the connections already taken go on). The socket closes
        once the accept loop has let go of it, never while the event loop still watches its descriptor."""
        self._accepting.add_done_callback(lambda _: self._listener.close())
        self._accepting.cancel()


def _socket_peer(writer: asyncio.StreamWriter) -> str:
    return str((writer.get_extra_info("peername") or ("?",))[0])


@dataclass
class HttpServer(Generic[PeerT]):
    """Accepts connections, enforces the limits, parses requests and hands each to `handler`."""

    handler: Handler[PeerT]
    prepare: Prepare[PeerT]
    limits: HttpLimits
    events: HttpEvents
    draining: bool = False
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    _connections: set[_Connection] = field(default_factory=set)
    _per_peer: dict[str, int] = field(default_factory=dict)
    _opening: set[asyncio.Task[None]] = field(default_factory=set)  # front door sockets, header unread
    _sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> asyncio.Server:
        server = await asyncio.start_server(
            self.connection, host, port, limit=READ_SIZE, backlog=ACCEPT_BATCH
        )
        self._start_sweeper()
        return server

    async def start_front_door(self, host: str, port: int, addresses: frozenset[str]) -> FrontDoorListener:
        """A listener for the front door only: a connection from any other address is closed unread;
        one from the front door must open with a PROXY v2 header (`_front_door_connection`)."""
        listener = socket.create_server((host, port), backlog=ACCEPT_BATCH)
        listener.setblocking(False)
        accepting = asyncio.create_task(self._accept_front_door(listener, addresses))
        self._start_sweeper()
        return FrontDoorListener(listener, accepting)

    async def _accept_front_door(self, listener: socket.socket, addresses: frozenset[str]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                raw, _ = await loop.sock_accept(listener)
            except OSError as error:  # e.g. out of descriptors: as asyncio's own servers, wait and go on
                log.error("front door listener: accept failed: %s", error)
                await asyncio.sleep(1.0)
                continue
            task = asyncio.create_task(self._front_door_connection(raw, addresses))
            self._opening.add(task)  # a reference until it has its transport (tasks are held weakly)
            task.add_done_callback(self._opening.discard)

    def _start_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())
        self.idle.set()

    async def last_call(self, grace_s: float = LAST_CALL_S) -> None:
        """While draining: give each open keep-alive connection up to `grace_s` for one more request,
        answered with `Connection: close`, then close the rest. A client behind the front door (TCP:
        it cannot move a connection) whose request was already on its way then gets an answer, and
        its next request opens a connection the front door sends to another node, instead of meeting
        a connection closed under it."""
        deadline = time.monotonic() + grace_s
        while self._connections and time.monotonic() < deadline:
            await asyncio.sleep(LAST_CALL_POLL_S)
        self.close_all()

    def close_all(self) -> None:
        """Close every connection (drain calls it once nothing is in flight)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self._connections):
            connection.writer.close()

    @property
    def connections(self) -> int:
        return len(self._connections)

    # --- one connection ------------------------------------------------------------------------------

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, _socket_peer(writer))

    async def _front_door_connection(self, raw: socket.socket, addresses: frozenset[str]) -> None:
        """A socket accepted on the front door's listener: from one of its addresses, opening with a PROXY
        v2 header, else closed without an answer. The client's address from the header is the peer; a
        LOCAL header (the front door's own health check) leaves the front door as the peer. Only then
        does asyncio get the socket, with the client's first byte still unread."""
        raw.setblocking(False)
        front_door = str(raw.getpeername()[0])
        if front_door not in addresses:
            log.warning("connection from %s on the front door's port refused: not the front door", front_door)
            self._abort(raw, "not-front-door")
            return
        if len(self._connections) >= self.limits.max_connections:  # before reading: as every connection
            self._abort(raw, "connection-cap")
            return
        try:
            async with asyncio.timeout(self.limits.header_timeout):
                header = await proxy_protocol.read_header(raw)
        except ProxyHeaderRefused as refused:
            self._refuse_proxy_header(front_door, refused.reason, refused.message, raw)
            return
        except TimeoutError:
            self._refuse_proxy_header(front_door, "timeout", "no whole PROXY v2 header in time", raw)
            return
        except OSError as error:
            self._refuse_proxy_header(front_door, "truncated", str(error), raw)
            return
        address = header.source[0] if header.source is not None else front_door

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
            return self._serve(reader, writer, address)

        def protocol() -> asyncio.StreamReaderProtocol:
            # with a callback, as start_server's: StreamWriter.start_tls then takes the server's side
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=READ_SIZE), connected)

        try:
            await asyncio.get_running_loop().connect_accepted_socket(protocol, raw)
        except OSError:  # the front door went away between the header and here
            raw.close()

    def _refuse_proxy_header(self, front_door: str, reason: str, message: str, raw: socket.socket) -> None:
        log.warning("connection from the front door %s refused: %s (%s)", front_door, message, reason)
        self._abort(raw, f"proxy-header-{reason}")

    def _abort(self, raw: socket.socket, reason: str) -> None:
        """Close without an answer, with a reset (as a transport's abort): nothing more is read or sent."""
        self.events.closed(reason)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str) -> None:
        refused = self._admit(address)
        if refused:
            self.events.closed(refused)
            self.events.answered(503, 0.0)
            writer.write(Response.json(503, {"error": refused}).encode(keep_alive=False))
            writer.close()
            return
        connection = _Connection(writer, address)
        self._connections.add(connection)
        try:
            peer = await self.prepare(writer, address)
            if peer is not None:
                await self._requests(connection, reader, peer)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self._connections.discard(connection)
            self._release(address)
            writer.close()

    def _admit(self, address: str) -> str | None:
        if len(self._connections) >= self.limits.max_connections:
            return "connection-cap"
        count = self._per_peer.get(address, 0)
        if count >= self.limits.max_connections_per_peer:
            return "peer-connection-cap"
        self._per_peer[address] = count + 1
        return None

    def _release(self, address: str) -> None:
        count = self._per_peer.pop(address, 1) - 1
        if count > 0:
            self._per_peer[address] = count

    async def _requests(self, connection: _Connection, reader: asyncio.StreamReader, peer: PeerT) -> None:
        limits = self.limits
        parse = _Parse(limits)
        first, ending = True, False
        while True:
            if parse.ready:  # answered in order, pipelined ones too (while draining: then closed)
                connection.expire(math.inf, "")
                if not await self._answer(connection, parse.ready.popleft(), peer):
                    return
                continue
            if ending:
                if parse.refusal is not None:
                    await self._refuse(connection, parse.refusal)
                return
            if self.draining and not (parse.in_head or parse.in_body):
                return  # nothing half-read: the connection ends here
            if parse.in_head:
                connection.expire(parse.started + limits.header_timeout, "header-timeout")
            elif parse.in_body:
                connection.expire(parse.head_end + limits.body_timeout, "body-timeout")
            elif first:  # a new connection: the header timeout runs from its acceptance
                connection.expire(time.monotonic() + limits.header_timeout, "header-timeout")
            else:
                connection.expire(time.monotonic() + limits.idle_timeout, "idle-timeout")
            data = await reader.read(READ_SIZE)
            if not data:
                return
            first = False
            ending = not parse.feed(data)
            if parse.continue_wanted:
                parse.continue_wanted = False
                if parse.in_body and not ending:  # the head was accepted and its body is still to come
                    connection.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _answer(self, connection: _Connection, message: _Message, peer: PeerT) -> bool:
        """Answer one request; True when the connection stays open for another."""
        self.inflight += 1
        self.idle.clear()
        try:
            request = Request(message.method, message.target, message.headers, message.body)
            response = await self.handler(request, peer)
            keep_alive = message.keep_alive and not response.close and not self.draining
            await self._send(connection, response.encode(keep_alive=keep_alive))
        finally:
            self.inflight -= 1
            if not self.inflight:
                self.idle.set()
        self.events.answered(response.status, time.monotonic() - message.started)
        return keep_alive

    async def _refuse(self, connection: _Connection, refusal: _Refused) -> None:
        self.events.closed(refusal.error)
        self.events.answered(refusal.status, 0.0)
        await self._send(
            connection, Response.json(refusal.status, {"error": refusal.error}).encode(keep_alive=False)
        )

    async def _send(self, connection: _Connection, data: bytes) -> None:
        writer = connection.writer
        writer.write(data)
        if writer.transport.get_write_buffer_size():  # the client is slow to read: bound the wait
            connection.expire(time.monotonic() + self.limits.body_timeout, "send-timeout")
            await writer.drain()
            connection.expire(math.inf, "")

    async def _sweep(self) -> None:
        limits = self.limits
        tick = max(
            0.05, min(limits.header_timeout, limits.body_timeout, limits.idle_timeout) / TICKS_PER_TIMEOUT
        )
        while True:
            await asyncio.sleep(min(tick, 1.0))
            now = time.monotonic()
            for connection in list(self._connections):
                if connection.deadline <= now:
                    self.events.closed(connection.why)
                    connection.deadline = math.inf
                    connection.writer.transport.abort()
