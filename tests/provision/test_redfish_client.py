"""The Redfish client (aifactory.provision.redfish, sushy underneath) at its edges: TLS checked against
the site CA and a certificate from another CA refused, a BMC that never answers, HTTP errors as one
ProvisionError, the credential in no error and no log line (and one message at the console edge),
and nothing of the library in what Pulumi pickles into the stack's state.

Real parts: the sushy-tools emulator, over HTTPS with a server certificate from a throwaway site CA
made by the project's own CA code; a loopback socket that accepts and never answers. One stand-in, said
where it is used: a loopback server answering error bodies that are not Redfish's (the emulator only
sends well-formed ones).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dill
import pytest
from pulumi.dynamic.dynamic import serialize_provider

from aifactory.errors import ExitCode, ProvisionError
from aifactory.provision.host import BareMetalHostLogic
from aifactory.provision.identity import read_identity
from aifactory.provision.provider import BareMetalHostProvider
from aifactory.provision.redfish import RETRY_DELAY, BmcCredentials, RedfishClient, TlsSettings
from aifactory.trust.issuing.certs import ensure_site_ca
from aifactory.trust.tokens import TrustFiles
from tests.provision.emulator import PASSWORD, USER, Emulator, free_port
from tests.provision.test_redfish_emulator import SYSTEM_A, props, system
from tests.provision.test_redfish_emulator import live as live_system
from tests.telemetry.loopback_tls import LoopbackTls, loopback_tls

pytestmark = pytest.mark.slow  # each module fixture starts an emulator

HOST = "lab-cpu-001"
WRONG_PASSWORD = "not-the-password-7"
# What a library object, a session or a connection would put in a pickle (their modules).
LIBRARY_MODULES = ("sushy", "requests", "urllib3", "http", "ssl", "socket", "aifactory.provision.redfish")


@pytest.fixture(scope="module")
def site_tls(tmp_path_factory: pytest.TempPathFactory) -> LoopbackTls:
    expires = datetime.now(UTC) + timedelta(days=1)
    return loopback_tls(tmp_path_factory.mktemp("site-ca"), site="bmcsite", expires=expires)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another site's CA: a well-formed CA that did not sign the BMC's certificate."""
    trust = TrustFiles(tmp_path_factory.mktemp("other-ca") / "runtime")
    return ensure_site_ca(trust, site="other").certificate


@pytest.fixture(scope="module")
def tls_emulator(tmp_path_factory: pytest.TempPathFactory, site_tls: LoopbackTls) -> Iterator[Emulator]:
    tls = (site_tls.server.certificate, site_tls.server.key, site_tls.ca)
    running = Emulator(tmp_path_factory.mktemp("bmc-tls"), free_port(), tls=tls)
    running.start([system(SYSTEM_A, power="On")])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    running = Emulator(tmp_path_factory.mktemp("bmc"), free_port()).start([system(SYSTEM_A, power="On")])
    yield running
    running.stop()


def over_tls(endpoint: str, ca: Path | None) -> dict[str, Any]:
    return {**props(endpoint), "tls": {"verify": True, "ca_bundle": str(ca) if ca else None}}


def client(endpoint: str, *, password: str = PASSWORD, **options: Any) -> RedfishClient:
    return RedfishClient(
        endpoint,
        BmcCredentials(USER, password),
        host=HOST,
        credentials_reference="secret://lab/bmc/lab-cpu-001",
        **options,
    )


# -- TLS -------------------------------------------------------------------------------------------


def test_the_bmc_certificate_verifies_against_the_site_ca(tls_emulator, site_tls):
    assert tls_emulator.endpoint.startswith("https://")
    found = BareMetalHostLogic.client(over_tls(tls_emulator.endpoint, site_tls.ca))
    reported = found.find_system()
    assert reported["UUID"] == SYSTEM_A
    assert read_identity(found, reported).macs == ("00:5c:52:31:3a:9c",)


def test_a_certificate_from_another_ca_is_refused(tls_emulator, other_ca):
    with pytest.raises(ProvisionError) as caught:
        BareMetalHostLogic.client(over_tls(tls_emulator.endpoint, other_ca)).find_system()
    error = caught.value
    assert error.code == "bmc-tls" and error.exit_code == ExitCode.CANNOT_EVALUATE
    assert tls_emulator.endpoint in error.message and str(other_ca) in error.message
    assert "unable to get local issuer certificate" in error.message
    assert "--bmc-ca" in (error.hint or "")


def test_without_a_ca_file_the_system_trust_store_decides_and_refuses_a_site_certificate(tls_emulator):
    with pytest.raises(ProvisionError) as caught:
        client(tls_emulator.endpoint, tls=TlsSettings()).find_system()
    assert caught.value.code == "bmc-tls" and "the system's trust store" in caught.value.message


def test_a_missing_ca_file_is_named_before_anything_is_sent(tmp_path):
    missing = tmp_path / "site-ca.pem"
    with pytest.raises(ProvisionError) as caught:
        bmc = client(f"https://127.0.0.1:{free_port()}", tls=TlsSettings(ca_bundle=str(missing)))
        bmc.get("/redfish/v1/")
    assert caught.value.code == "bmc-ca-missing" and str(missing) in caught.value.message


# -- a BMC that does not answer, or answers an error -----------------------------------------------


@contextmanager
def silent_bmc() -> Iterator[tuple[str, list[socket.socket]]]:
    """A loopback port that accepts every connection and never answers; the accepted ones are listed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()
        listener.close()


def test_a_bmc_that_never_answers_times_out_once_per_attempt():
    with silent_bmc() as (endpoint, accepted):
        started = time.monotonic()
        with pytest.raises(ProvisionError) as caught:
            client(endpoint, timeout=1.0, attempts=2).get("/redfish/v1/")
        elapsed = time.monotonic() - started
    assert caught.value.code == "bmc-unreachable"
    assert "did not answer within 1 s" in caught.value.message and endpoint in caught.value.message
    assert len(accepted) == 2  # each attempt asked once, and waited its timeout
    assert 2.0 <= elapsed < 2.0 + RETRY_DELAY + 3.0


def test_a_closed_port_is_refused_at_once_with_one_attempt():
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ProvisionError) as caught:
        client(closed, attempts=1).get("/redfish/v1/")
    assert time.monotonic() - started < 2.0
    assert caught.value.code == "bmc-unreachable" and "Connection refused" in caught.value.message


def test_an_http_error_is_one_clear_provision_error(emulator):
    missing = "/redfish/v1/Systems/no-such-system"
    with pytest.raises(ProvisionError) as caught:
        client(emulator.endpoint).get(missing)
    error = caught.value
    assert error.code == "bmc-request-failed" and error.exit_code == ExitCode.CANNOT_EVALUATE
    assert f"GET {emulator.endpoint}{missing}" in error.message and "HTTP 404" in error.message
    assert HOST in error.message and "--debug" in (error.hint or "")


def test_a_boot_source_the_system_does_not_offer_is_refused_before_anything_changes(emulator):
    bmc = client(emulator.endpoint)
    before = live_system(emulator.endpoint, SYSTEM_A)["Boot"]
    with pytest.raises(ProvisionError) as caught:
        bmc.set_boot_override(bmc.find_system(), target="Usb")
    assert caught.value.code == "bmc-unsupported" and "Usb" in caught.value.message
    assert live_system(emulator.endpoint, SYSTEM_A)["Boot"] == before


@contextmanager
def answering(status: int, body: bytes) -> Iterator[str]:
    """A stand-in: every GET answered `status` with `body`, an error body no emulator sends."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (500, b'{"error": "internal failure"}', "bmc-request-failed"),
        (400, b'["not", "an", "object"]', "bmc-request-failed"),
        (400, b'{"error": {"@Message.ExtendedInfo": "text"}}', "bmc-request-failed"),
        (401, b'{"error": "unauthorised"}', "bmc-auth"),
    ],
    ids=["error-a-string", "body-a-list", "extended-info-a-string", "auth-error-a-string"],
)
def test_an_error_body_that_is_not_redfish_is_still_one_clear_error(status, body, code):
    with answering(status, body) as endpoint, pytest.raises(ProvisionError) as caught:
        client(endpoint).get("/redfish/v1/")
    assert caught.value.code == code and f"HTTP {status}" in caught.value.message


# -- the credential --------------------------------------------------------------------------------


def secrets_of(password: str) -> list[str]:
    return [password, f"{USER}:{password}", base64.b64encode(f"{USER}:{password}".encode()).decode()]


def test_the_credential_is_in_no_error_and_no_log_line(emulator, tls_emulator, other_ca, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, the library's exchange included
    # an in-process CLI run earlier in the suite quiets "sushy" (console.QUIET_UNLESS_DEBUG): open it
    caplog.set_level(logging.DEBUG, logger="sushy")
    wrong = client(emulator.endpoint, password=WRONG_PASSWORD)
    errors = []
    for failing in (
        wrong.find_system,
        lambda: client(emulator.endpoint).get("/redfish/v1/Systems/no-such-system"),
        lambda: client(tls_emulator.endpoint, tls=TlsSettings(ca_bundle=str(other_ca))).find_system(),
    ):
        with pytest.raises(ProvisionError) as caught:
            failing()
        errors.append(caught.value)
    assert client(emulator.endpoint).find_system()["UUID"] == SYSTEM_A  # the right one, used
    assert [e.code for e in errors] == ["bmc-auth", "bmc-request-failed", "bmc-tls"]
    assert "secret://lab/bmc/lab-cpu-001" in errors[0].message  # the reference, never the value
    assert any(r.name.startswith("sushy") for r in caplog.records)  # the library's lines were caught
    shown = [e.render() for e in errors] + [json.dumps(e.as_dict()) for e in errors]
    shown += [repr(wrong), caplog.text]
    for secret in secrets_of(PASSWORD) + secrets_of(WRONG_PASSWORD):
        assert not any(secret in text for text in shown), secret


CONSOLE_PROBE = """
import sys
from aifactory.console import run_console
from aifactory.provision.redfish import BmcCredentials, RedfishClient

def command(arguments):
    bmc = RedfishClient(sys.argv[1], BmcCredentials("admin", "wrong-pass-7"), host="lab-cpu-001",
                        credentials_reference="secret://lab/bmc/lab-cpu-001")
    bmc.find_system()
    return 0

sys.exit(run_console(command, sys.argv[2:]))
"""


def test_the_console_shows_one_message_and_the_library_lines_only_with_debug(emulator):
    def run(*arguments: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", CONSOLE_PROBE, emulator.endpoint, *arguments]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    plain = run()
    assert plain.returncode == ExitCode.CANNOT_EVALUATE
    assert plain.stderr.splitlines() == [plain.stderr.strip()]  # one line
    assert plain.stderr.startswith("error[bmc-auth]: the BMC of lab-cpu-001")
    debug = run("--debug")
    assert "sushy.connector" in debug.stderr  # what --debug adds: the library's own account
    assert not any("wrong-pass-7" in out for out in (plain.stderr, debug.stderr))


# -- what Pulumi pickles ---------------------------------------------------------------------------


def pickled_modules(raw: bytes) -> set[str]:
    """The modules a pickle names (every class or function it refers to), read by loading it."""
    found: set[str] = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            found.add(module)
            return super().find_class(module, name)

    Recording(io.BytesIO(raw)).load()
    return found


def from_library(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in LIBRARY_MODULES)


def test_the_pickled_provider_and_the_resource_state_hold_no_library_object(emulator):
    provider = BareMetalHostProvider(poll_interval=0.5)
    inputs = props(emulator.endpoint)
    created = provider.create(inputs)  # a real create: the client was built, used and dropped
    refreshed = provider.read(created.id, created.outs)
    provider_modules = pickled_modules(base64.b64decode(serialize_provider(provider)))
    assert "aifactory.provision.provider" in provider_modules  # what the pickle does name
    assert not [m for m in provider_modules if from_library(m)], provider_modules
    raw_provider = base64.b64decode(serialize_provider(provider))
    assert not any(secret.encode() in raw_provider for secret in secrets_of(PASSWORD))
    # inputs and outputs: plain data only (addresses, ids, serials), no class of any module
    for state in (inputs, created.outs, refreshed.outs):
        assert pickled_modules(pickle.dumps(state)) == set()
        assert json.loads(json.dumps(state)) == state
    assert created.outs["identity"]["uuid"] == SYSTEM_A


def test_a_client_refuses_to_be_pickled(emulator):
    bmc = client(emulator.endpoint)
    bmc.find_system()  # with its connection open
    for dumps in (pickle.dumps, dill.dumps):
        with pytest.raises(TypeError, match="never pickled"):
            dumps(bmc)
