"""The front door on loopback, with real parts: Debian's HAProxy (TCP mode, `send-proxy-v2`, health
checks over TLS with the front door's service identity) in front of a real `aifactory-serve` with mTLS.

The config HAProxy runs is the front_door role's own template (playbooks/roles/front_door), rendered
with plain Jinja from the values the role would give it. Loopback's 127/8 stands for the site's
fabric: HAProxy connects to the node from 127.0.0.3 (the front door's address, the only one the node
takes PROXY headers from), the tenant's client connects from 127.0.0.5.

What it shows: a request through the front door is served end to end over TLS with the client's own
certificate; the decision log's peer is the client's address, not the front door's; a PROXY header
sent straight to the node by anyone else is refused and never becomes a peer; draining the node
through HAProxy's runtime API sends no new connection to it while an established one goes on, and
`ready` lets new ones in again.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jinja2
import pytest
from waiting import wait_for

from aifactory.frontdoor.runtime_api import RuntimeApi
from aifactory.runtime.proxy_protocol import encode
from aifactory.trust.certs import FRONT_DOOR_SERVICE, SiteCA
from aifactory.trust.issuing.certs import (
    IssuedCertificate,
    issue_client_certificate,
    issue_server_certificate,
    issue_service_certificate,
)

from .conftest import SITE, RuntimeSite
from .serving import BODY, PATH, Server, records, start_server, wait_for_model, write_checkpoint

pytest.importorskip("torch")

HAPROXY = "/usr/sbin/haproxy"  # Debian 12's haproxy package (scripts/setup.sh installs it)
ROLE = Path(__file__).parents[2] / "playbooks" / "roles" / "front_door"
FRONT_DOOR_ADDRESS = "127.0.0.3"  # HAProxy's source address towards the nodes
CLIENT_ADDRESS = "127.0.0.5"  # the tenant's machine
STRANGER_ADDRESS = "127.0.0.7"  # someone else on the fabric, who tries to claim another address
BACKEND, NODE = "aifactory_serve", "rtlab-cpu-001"
DAY = timedelta(days=1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def certs(site: RuntimeSite, tmp_path_factory: pytest.TempPathFactory) -> dict[str, IssuedCertificate]:
    """The node's certificate (naming the front door's address too: clients reach it there), the
    tenant's client certificate and the front door's service identity, all from the site CA."""
    folder = tmp_path_factory.mktemp("front-door-certs")
    expires = datetime.now(UTC) + DAY
    return {
        "server": issue_server_certificate(
            site.trust,
            site=SITE,
            server=NODE,
            addresses=("127.0.0.1",),  # here the node and the front door share loopback's address
            expires=expires,
            out_dir=folder / "server",
        ),
        "health": issue_client_certificate(
            site.trust, site=SITE, tenant="health", expires=expires, out_dir=folder / "health"
        ),
        "front-door": issue_service_certificate(
            site.trust, site=SITE, service=FRONT_DOOR_SERVICE, expires=expires, out_dir=folder / "front-door"
        ),
    }


@pytest.fixture(scope="module")
def node(
    site: RuntimeSite, certs: dict[str, IssuedCertificate], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, int]]:
    """The serving node: its own port for direct clients, and the front door's port (PROXY v2 from
    127.0.0.3 only); (server, front door port)."""
    root = tmp_path_factory.mktemp("front-door-node")
    write_checkpoint(site, root / "storage")
    server_cert = certs["server"]
    running = start_server(
        site,
        root / "storage",
        root / "node-runtime",
        "--tls-cert",
        str(server_cert.certificate),
        "--tls-key",
        str(server_cert.key),
        "--tls-client-ca",
        str(SiteCA.of(site.trust).certificate),
        "--front-door-port",
        "0",
        "--front-door",
        FRONT_DOOR_ADDRESS,
        tls=_readiness_context(certs["health"]),
    )
    line = next(line for line in running.output if "front door on port" in line)
    wait_for_model(running)
    yield running, int(line.rsplit(" ", 1)[1])
    running.stop()


@pytest.fixture(scope="module")
def front_door(
    node: tuple[Server, int], certs: dict[str, IssuedCertificate], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, RuntimeApi]]:
    """HAProxy with the role's configuration; (its client port, its runtime API)."""
    assert Path(HAPROXY).exists(), "Debian's haproxy is needed (scripts/setup.sh installs it)"
    folder = tmp_path_factory.mktemp("haproxy")
    identity = certs["front-door"]
    check_crt = folder / "front-door.pem"  # HAProxy reads the certificate and its key from one file
    check_crt.write_bytes(identity.certificate.read_bytes() + identity.key.read_bytes())
    check_crt.chmod(0o600)
    port = _free_port()
    config = folder / "haproxy.cfg"
    config.write_text(
        render_config(
            listen=("127.0.0.1", port),
            source=FRONT_DOOR_ADDRESS,
            backends=[{"name": NODE, "address": "127.0.0.1"}],
            backend_port=node[1],
            ca_file=identity.ca,
            check_crt=check_crt,
            admin_socket=folder / "admin.sock",
        )
    )
    checked = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    process = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    api = RuntimeApi(folder / "admin.sock")
    try:
        # Up only once its health check passed: TLS to the node with the service identity, over the
        # PROXY port (a LOCAL header), /healthz answered 200.
        wait_for(
            lambda: (api.socket_path.exists() and api.servers(BACKEND)[0].takes_new_connections) or None,
            what="HAProxy to find the node healthy",
            timeout=30,
        )
        yield port, api
    finally:
        process.terminate()
        process.wait(timeout=10)


def render_config(
    *,
    listen: tuple[str, int],
    source: str,
    backends: list[dict[str, object]],
    backend_port: int,
    ca_file: Path,
    check_crt: Path,
    admin_socket: Path,
) -> str:
    """The role's template with the values its defaults would give (no user switch: not run as root)."""
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = environment.from_string((ROLE / "templates" / "haproxy.cfg.j2").read_text())
    return template.render(
        front_door_admin_socket=str(admin_socket),
        front_door_user="",
        front_door_group="",
        front_door_timeout_connect_ms=2000,
        front_door_timeout_client_ms=30000,
        front_door_timeout_server_ms=30000,
        front_door_timeout_check_ms=2000,
        front_door_frontend_name="aifactory_front_door",
        front_door_backend_name=BACKEND,
        front_door_listen_address=listen[0],
        front_door_port=listen[1],
        front_door_source_address=source,
        front_door_ca_file=str(ca_file),
        front_door_check_crt=str(check_crt),
        front_door_check_interval_ms=300,
        front_door_backends=backends,
        front_door_backend_port=backend_port,
    )


def _client_context(issued: IssuedCertificate) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(issued.ca))
    context.load_cert_chain(str(issued.certificate), str(issued.key))
    return context


def _readiness_context(issued: IssuedCertificate) -> ssl.SSLContext:
    """The test helper's own calls (is the model loaded?) name the node `localhost`, which its
    certificate does not: the chain is still checked, the name not. Tenants' requests check both."""
    context = _client_context(issued)
    context.check_hostname = False
    return context


def _through_front_door(port: int, context: ssl.SSLContext) -> http.client.HTTPSConnection:
    """A client on 127.0.0.5 talking to the front door's address; TLS with the node, whose certificate
    must name that address."""
    return http.client.HTTPSConnection(
        "127.0.0.1", port, context=context, timeout=10, source_address=(CLIENT_ADDRESS, 0)
    )


def _infer(connection: http.client.HTTPSConnection) -> tuple[int, dict]:
    connection.request("POST", PATH, body=json.dumps(BODY), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_a_request_through_the_front_door_is_served_and_logged_with_the_clients_address(
    node: tuple[Server, int], front_door: tuple[int, RuntimeApi], certs: dict[str, IssuedCertificate]
) -> None:
    connection = _through_front_door(front_door[0], _client_context(certs["health"]))
    status, answer = _infer(connection)
    # TLS ended at the node: it is the node's certificate the client verified, the node read the tenant
    # from the client's certificate.
    peer_certificate = connection.sock.getpeercert()
    connection.close()
    assert status == 200, answer
    assert ("DNS", NODE) in peer_certificate["subjectAltName"]
    record = records(node[0])[answer["decision_id"]]
    assert (record["tenant"], record["identity"], record["allow"]) == ("health", "certificate", True)
    assert record["request"]["peer"] == CLIENT_ADDRESS  # not the front door's 127.0.0.3


def _send_raw(address: str, port: int, data: bytes) -> bytes:
    """Connect from `address`, send `data`, return whatever comes back before the node closes.

    A node that closes a connection unread resets it, and on a busy machine that reset can reach the
    client before its own connect or send has returned: a reset at any step is the node closing, and
    reads as nothing sent back. A refused connect (nothing listening) is not caught: it fails the test.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(address, 0)) as raw:
            raw.sendall(data)
            return raw.recv(65536)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def test_a_proxy_header_from_anyone_but_the_front_door_is_refused(
    node: tuple[Server, int], front_door: tuple[int, RuntimeApi], certs: dict[str, IssuedCertificate]
) -> None:
    server, front_door_port = node
    forged = encode(("203.0.113.9", 40000), ("127.0.0.1", front_door_port))
    before = server.log_path.read_text()
    # On the front door's port: closed unread, whoever is not the front door.
    assert _send_raw(STRANGER_ADDRESS, front_door_port, forged + b"\x16\x03\x01") == b""
    # On the node's own port a header is never read as one: the TLS layer refuses the bytes.
    context = _client_context(certs["health"])
    with socket.create_connection(
        ("127.0.0.1", server.port), timeout=10, source_address=(STRANGER_ADDRESS, 0)
    ) as raw:
        raw.sendall(forged)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            context.wrap_socket(raw, server_hostname="127.0.0.1").do_handshake()
    # And the front door's own address must send a header: bytes without one are refused.
    assert _send_raw(FRONT_DOOR_ADDRESS, front_door_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    assert "203.0.113.9" not in server.log_path.read_text()[len(before) :]
    # The server logs each refusal after closing the connection: wait for the lines, not the instant.
    wanted = (
        f"connection from {STRANGER_ADDRESS} on the front door's port refused: not the front door",
        "not a PROXY protocol v2 header (signature) (bad-signature)",
    )
    server.wait_logged(wanted, what="the server to log both refusals", timeout=20)


def test_draining_at_the_front_door_sends_no_new_connection_to_the_node(
    node: tuple[Server, int], front_door: tuple[int, RuntimeApi], certs: dict[str, IssuedCertificate]
) -> None:
    port, api = front_door
    context = _client_context(certs["health"])
    established = _through_front_door(port, context)
    assert _infer(established)[0] == 200
    served_before = len(records(node[0]))
    api.drain(BACKEND, NODE)
    try:
        (state,) = api.servers(BACKEND)
        assert (state.admin, state.takes_new_connections) == ("drain", False)
        assert _infer(established)[0] == 200  # a connection it holds goes on: nothing in flight is cut
        fresh = _through_front_door(port, context)
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            _infer(fresh)  # HAProxy has no server to give it: closed before any TLS with the node
        fresh.close()
        assert len(records(node[0])) == served_before + 1  # only the established connection's request
    finally:
        established.close()
        api.ready(BACKEND, NODE)
    assert api.servers(BACKEND)[0].admin == "ready"
    again = _through_front_door(port, context)
    assert _infer(again)[0] == 200
    again.close()


def test_the_role_template_is_what_haproxy_accepts_for_ipv6_too(tmp_path: Path) -> None:
    """Addresses with colons are bracketed, so HAProxy does not read the last group as the port."""
    if shutil.which(HAPROXY) is None:
        pytest.fail("Debian's haproxy is needed (scripts/setup.sh installs it)")
    crt = tmp_path / "x.pem"
    crt.write_text("")
    text = render_config(
        listen=("::1", 18443),
        source="::1",
        backends=[{"name": "lab-cpu-001", "address": "2001:db8::3"}],
        backend_port=8601,
        ca_file=crt,
        check_crt=crt,
        admin_socket=tmp_path / "admin.sock",
    )
    assert "bind [::1]:18443" in text
    assert "server lab-cpu-001 [2001:db8::3]:8601 verifyhost lab-cpu-001" in text
