"""The inference server against hostile clients: caps, timeouts, framing, bounded logging (issue 18).

A real `aifactory-serve` on loopback; clients are raw sockets, so that they can send what no HTTP
library would. Loopback has many addresses: 127.0.0.1 and 127.0.0.2 are two peers to the server,
and each test speaks from its own address so that the per-peer limits of one do not touch another.
"""

from __future__ import annotations

import json
import re
import resource
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from waiting import wait_for

from aifactory.runtime.http import FD_HEADROOM, HttpLimits, nofile_limit
from aifactory.runtime.limits import MAX_RECORDED_NAME, DenialLimiter, nests_deeper_than, recorded_name

from .conftest import RuntimeSite
from .serving import BODY, PATH, Server, records, start_server, wait_for_model, write_checkpoint

pytest.importorskip("torch")

STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def exchange(port: int, data: bytes, *, source: str, timeout: float = 20) -> list[int]:
    """Send `data` on one connection, read until the server closes it; the statuses of its answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking everything: what it answered is read below
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return [int(code) for code in STATUS.findall(received)]


def request(method: str, target: str, *, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: test", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def metric(server: Server, line_start: str) -> float:
    text = server.call("GET", "/metrics")[1]["text"]
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return sum(values)


def count_records(server: Server) -> int:
    return len(records(server)) if server.log_path.exists() else 0


def log_size(server: Server) -> int:
    return server.log_path.stat().st_size if server.log_path.exists() else 0


@pytest.fixture(scope="module")
def server(site: RuntimeSite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("hardened")
    write_checkpoint(site, root / "storage")
    running = start_server(
        site,
        root / "storage",
        root / "runtime",
        "--header-timeout",
        "2",
        "--body-timeout",
        "2",
        "--idle-timeout",
        "2",
        "--denial-window",
        "2",
        nofile=nofile_limit(1024),  # what the runtime role's unit sets for the default cap
    )
    wait_for_model(running)
    yield running
    running.stop()


@pytest.mark.slow
def test_idle_connections_from_one_peer_are_capped_and_closed_while_another_peer_is_served(
    site: RuntimeSite, tmp_path: Path
) -> None:
    # The header timeout outlasts the flood and the server's catching up with it on a loaded machine:
    # the capped connections must still be open when the other peer is served.
    running = start_server(
        site, tmp_path / "storage", tmp_path / "runtime", "--header-timeout", "20", nofile=nofile_limit(1024)
    )  # the limit on open files the runtime role's unit sets for the default caps
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    idle: list[socket.socket] = []
    try:
        for _ in range(1100):  # slowloris: a head that never ends, all from 127.0.0.3
            sock = socket.create_connection(
                ("127.0.0.1", running.port), timeout=30, source_address=("127.0.0.3", 0)
            )
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
            idle.append(sock)

        # The bound is on serving another peer while the flood is held, not while the kernel's listen
        # queue still holds the flood's last connections: on a loaded machine the server may still be
        # accepting (and refusing) them, and a connection attempt on a full queue waits a SYN retry (1 s).
        refused = 'aifactory_serve_http_closed_total{reason="peer-connection-cap"}'
        wait_for(lambda: metric(running, refused) == 1100 - 256, what="the excess refused", timeout=15)
        began = time.monotonic()  # another peer meanwhile
        other = socket.create_connection(
            ("127.0.0.1", running.port), timeout=1, source_address=("127.0.0.2", 0)
        )
        with other:
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            assert other.recv(4096).startswith(b"HTTP/1.1 200 ")
        assert time.monotonic() - began < 1.0  # the bound
        assert metric(running, "aifactory_serve_connections ") >= 256  # the capped ones still open then
        assert len(list(Path(f"/proc/{running.process.pid}/fd").iterdir())) < 256 + 100

        answers = []
        for sock in idle:  # 503 for each past the per-peer cap; the others closed by the header timeout
            try:
                answers.append(sock.recv(4096)[:13])
            except ConnectionResetError:
                answers.append(b"reset")
        assert answers.count(b"") == 256  # the default per-peer cap
        assert answers.count(b"HTTP/1.1 503 ") + answers.count(b"reset") == 1100 - 256
        assert metric(running, refused) == 1100 - 256
        assert metric(running, 'aifactory_serve_http_closed_total{reason="header-timeout"}') == 256
    finally:
        for sock in idle:
            sock.close()
        running.stop()


def test_limits_come_from_runtime_yaml_as_deploy_writes_them(site: RuntimeSite, tmp_path: Path) -> None:
    running = start_server(
        site,
        tmp_path / "storage",
        tmp_path / "runtime",
        as_deployed=True,
        serve_settings={"max_connections": 5, "max_connections_per_peer": 2},
    )
    held = [
        socket.create_connection(("127.0.0.1", running.port), timeout=10, source_address=("127.0.0.10", 0))
        for _ in range(2)
    ]
    try:
        assert exchange(running.port, request("GET", "/healthz"), source="127.0.0.10") == [503]
        assert exchange(
            running.port, request("GET", "/healthz", headers={"Connection": "close"}), source="127.0.0.11"
        ) == [200]
    finally:
        for sock in held:
            sock.close()
        assert running.stop() == 0


@pytest.mark.parametrize(
    "raw",
    [
        # Transfer-Encoding with a capital C beside Content-Length 0: the body is a second request.
        b"POST /v1/models/vitals-mlp/infer HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: Chunked\r\n"
        b"Content-Length: 0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: test\r\n\r\n",
        b"POST /v1/models/vitals-mlp/infer HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n",
        b"POST /v1/models/vitals-mlp/infer HTTP/1.1\r\nHost: test\r\nContent-Length: 1_0\r\n\r\n0123456789",
        b"POST /v1/models/vitals-mlp/infer HTTP/1.1\r\nHost: test\r\nContent-Length: +10\r\n\r\n0123456789",
        b"POST /v1/models/vitals-mlp/infer HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n"
        b"Content-Length: 10\r\n\r\n{}",
    ],
    ids=["te-Chunked-with-cl-0", "te-chunked", "cl-1_0", "cl-plus", "cl-twice"],
)
def test_ambiguous_framing_is_refused_with_one_400_and_at_most_one_record(server: Server, raw: bytes) -> None:
    before = count_records(server)
    assert exchange(server.port, raw, source="127.0.0.4") == [400]
    assert count_records(server) - before <= 1


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    two = request("GET", "/healthz") + request("GET", "/nothing", headers={"Connection": "close"})
    assert exchange(server.port, two, source="127.0.0.5") == [200, 404]


def test_a_client_that_expects_100_continue_gets_it_before_sending_its_body(
    server: Server, site: RuntimeSite
) -> None:
    body = json.dumps(BODY).encode()
    head = request("POST", PATH, headers={"Expect": "100-continue", "Connection": "close"})
    head = head.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode())
    head = head.replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {site.tokens['health']}\r\n\r\n".encode())
    with socket.create_connection(
        ("127.0.0.1", server.port), timeout=20, source_address=("127.0.0.9", 0)
    ) as sock:
        sock.sendall(head)
        assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_nested_body_is_400_and_the_server_stays_up(server: Server, site: RuntimeSite) -> None:
    before = log_size(server)
    for token in (site.tokens["health"], None):
        headers = {"Connection": "close", **({"Authorization": f"Bearer {token}"} if token else {})}
        nested = request("POST", PATH, body=b"[" * 500_000, headers=headers)
        assert exchange(server.port, nested, source="127.0.0.6") == [400]
    assert log_size(server) == before  # refused before any decision
    deep_but_closed = b'{"inputs": ' + b"[" * 20 + b"1" + b"]" * 20 + b"}"  # 21 levels, well-formed
    closing = {"Connection": "close"}
    assert exchange(
        server.port, request("POST", PATH, body=deep_but_closed, headers=closing), source="127.0.0.6"
    ) == [400]
    assert server.call("GET", "/healthz")[0] == 200


def test_health_without_a_token_says_ok_and_nothing_else(server: Server, site: RuntimeSite) -> None:
    assert server.call("GET", "/healthz") == (200, {"status": "ok"})
    assert server.call("GET", "/healthz", token="aft1.not.valid") == (200, {"status": "ok"})
    status, detailed = server.call("GET", "/healthz", token=site.tokens["research"])
    assert status == 200 and detailed["models"]["vitals-mlp"]["checkpoint"].startswith("/")


def test_limits_on_target_head_body_and_timeouts(server: Server) -> None:
    source = "127.0.0.7"
    assert exchange(server.port, request("GET", "/" + "a" * 3000), source=source) == [414]
    huge_head = request("GET", "/healthz", headers={f"X-{n}": "v" * 1000 for n in range(20)})
    assert exchange(server.port, huge_head, source=source) == [431]
    too_big = b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n"
    assert exchange(server.port, too_big, source=source) == [413]
    short_body = b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{}"
    before = metric(server, 'aifactory_serve_http_closed_total{reason="body-timeout"}')
    assert exchange(server.port, short_body, source=source) == []  # closed by the body timeout
    assert metric(server, 'aifactory_serve_http_closed_total{reason="body-timeout"}') == before + 1
    before = metric(server, 'aifactory_serve_http_closed_total{reason="idle-timeout"}')
    assert exchange(server.port, request("GET", "/healthz"), source=source) == [200]  # then idle, closed
    assert metric(server, 'aifactory_serve_http_closed_total{reason="idle-timeout"}') == before + 1


def test_a_client_that_does_not_read_its_answers_is_closed_by_the_body_timeout(server: Server) -> None:
    before = metric(server, 'aifactory_serve_http_closed_total{reason="send-timeout"}')
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.8", 0))
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(request("GET", "/metrics") * 4000)  # megabytes of answers, never read
        deadline = time.monotonic() + 30
        while metric(server, 'aifactory_serve_http_closed_total{reason="send-timeout"}') == before:
            assert time.monotonic() < deadline, "the server still waits for a client that does not read"
            time.sleep(0.2)


@pytest.mark.slow
def test_unauthenticated_requests_with_long_names_leave_the_log_bounded(server: Server) -> None:
    before = log_size(server)
    sixty_kb = request("POST", f"/v1/models/{'m' * 60_000}/infer", body=json.dumps(BODY).encode())

    def hostile(number: int) -> list[int]:
        return exchange(server.port, sixty_kb, source=f"127.0.1.{number % 8 + 1}")

    with ThreadPoolExecutor(8) as pool:
        answers = [status for statuses in pool.map(hostile, range(10_000)) for status in statuses]
    assert set(answers) <= {414} and answers  # cut off at the path limit (2,048 bytes), never decided

    # Names under the path limit reach the policy: recorded cut short, and rate-limited per peer.
    long_name = "n" * 2000
    keep_alive = request("POST", f"/v1/models/{long_name}/infer", body=json.dumps(BODY).encode()) * 200
    answered = exchange(
        server.port, keep_alive + request("GET", "/x", headers={"Connection": "close"}), source="127.0.2.1"
    )
    # 20 denials per peer and 2-second window are recorded, then 429 until the window ends.
    assert answered[:21] == [404] * 20 + [429] and set(answered[:200]) == {404, 429}, answered
    assert log_size(server) - before < 5_000_000
    recorded = [r for r in records(server).values() if r["resource"].startswith("model/nnn")]
    assert len(recorded) == answered[:200].count(404)
    assert recorded[0]["resource"] == f"model/{recorded_name(long_name)}"
    assert len(recorded[0]["resource"]) < MAX_RECORDED_NAME + 30
    deadline = time.monotonic() + 15  # the 429s are recorded once per window, when it ends

    def summed() -> int:
        summaries = [r for r in records(server).values() if r["reasons"] == ["rate-limited"]]
        assert {s["request"]["peer"] for s in summaries} <= {"127.0.2.1"}
        return sum(s["request"]["suppressed"] for s in summaries)

    while summed() < answered[:200].count(429):
        assert time.monotonic() < deadline, "the rate-limited requests were not recorded"
        time.sleep(0.2)
    assert summed() == answered[:200].count(429)


def test_the_runtime_role_sets_the_servers_limit_on_open_files() -> None:
    role = Path(__file__).resolve().parents[2] / "playbooks" / "roles" / "runtime"
    private = yaml.safe_load((role / "vars" / "main.yml").read_text())
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    assert private["_runtime_nofile_headroom"] == FD_HEADROOM
    assert (
        "LimitNOFILE={{ _runtime_nofile }}" in (role / "templates" / "aifactory-serve.service.j2").read_text()
    )
    assert defaults["runtime_max_connections"] == HttpLimits().max_connections
    assert defaults["runtime_max_connections_per_peer"] == HttpLimits().max_connections_per_peer


def test_denial_limiter_counts_per_peer_and_for_everyone() -> None:
    limiter = DenialLimiter(per_peer=2, total=3, window=10)
    assert limiter.admit("a", 0) and limiter.admit("b", 0)
    limiter.denied("a", 0)
    limiter.denied("a", 1)
    assert not limiter.admit("a", 2) and limiter.admit("b", 2)
    limiter.denied("b", 2)
    assert not limiter.admit("b", 3) and not limiter.admit("c", 3)  # 3 denials in all: everyone waits
    assert limiter.ended(5) == []  # the windows are still open
    ended = {(s.peer, s.count) for s in limiter.ended(12.5)}  # b's window, from 2, ended too
    assert ended == {("a", 1), ("*", 2)}
    assert limiter.admit("a", 13) and limiter.tracked == 0


def test_nesting_depth_ignores_brackets_in_strings() -> None:
    assert not nests_deeper_than(b'{"inputs": [[1, 2], [3]]}', 3)
    assert nests_deeper_than(b'{"inputs": [[[1, 2], [3]]]}', 3)
    assert not nests_deeper_than(b"[" * 100 + b"]" * 100, 100)
    assert nests_deeper_than(b"[" * 101 + b"]" * 101, 100)
    assert not nests_deeper_than(b'{"a": "' + b"[" * 100 + b'"}', 1)
    assert not nests_deeper_than(b'["\\"[[[[[[[[[[[[[[[[[[[["]' + b"[]" * 20, 2)
