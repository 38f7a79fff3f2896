"""The inference server: decisions per request over real HTTP, the decision log, drain, TLS, load."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aifactory.runtime.decisionlog import verify_log
from aifactory.runtime.loadgen import LoadResult, run_load
from aifactory.runtime.tokens import issue_token, revoke_token

from .conftest import SITE, RuntimeSite

torch = pytest.importorskip("torch")

from aifactory.runtime import checkpoint  # noqa: E402
from aifactory.runtime.model import ModelConfig, build  # noqa: E402

MODEL_PATH = "srv/share/models/vitals-mlp"
PATH = "/v1/models/vitals-mlp/infer"
BODY = {"inputs": [[0.1] * 16, [-0.3] * 16]}


def write_checkpoint(storage_root: Path, *, step: int = 10, hidden: int = 16) -> None:
    config = ModelConfig(features=16, classes=4, hidden=hidden, layers=2)
    model = build(config, seed=3)
    checkpoint.save(
        storage_root / MODEL_PATH / "checkpoints",
        step=step,
        model_state=model.state_dict(),
        optimizer_state={},
        meta={"model": "vitals-mlp", "network": config.as_dict()},
    )


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int
    runtime_dir: Path
    output: list[str] = field(default_factory=list)
    tls: ssl.SSLContext | None = None

    @property
    def log_path(self) -> Path:
        return self.runtime_dir / "decisions.jsonl"

    def connection(self) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection("localhost", self.port, context=self.tls, timeout=30)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def call(self, method: str, path: str, body: object = None, token: str | None = None) -> tuple[int, dict]:
        connection = self.connection()
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        connection.close()
        return response.status, (
            json.loads(raw)
            if response.getheader("Content-Type") == "application/json"
            else {"text": raw.decode()}
        )

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout=60)


def start_server(
    site: RuntimeSite,
    storage_root: Path,
    runtime_dir: Path,
    *extra: str,
    tls: ssl.SSLContext | None = None,
    as_deployed: bool = False,
) -> Server:
    """as_deployed: configured like deploy does it, by runtime.yaml and `--config F --host A --port P`."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    for name in ("token-key/allowed_signers", "revoked-tokens.json", "revoked-tokens.json.sig"):
        target = runtime_dir / name  # what deploy copies to a node: the public key and the revocation list
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.symlink(site.runtime_dir / name, target)
    if as_deployed:
        config = runtime_dir / "runtime.yaml"
        config.write_text(
            json.dumps(
                {
                    "site": "rtlab",
                    "host": "rtlab-cpu-001",
                    "plan": str(site.plan_path),
                    "state_dir": str(runtime_dir),
                    "storage_root": str(storage_root),
                    "serve": {"address": "10.0.0.1", "port": 8440},
                }
            )
        )
        options = ["--config", str(config), "--host", "127.0.0.1", "--port", "0"]
    else:
        options = [
            "--plan",
            str(site.plan_path),
            "--host-name",
            "rtlab-cpu-001",
            "--port",
            "0",
            "--storage-root",
            str(storage_root),
            "--runtime-dir",
            str(runtime_dir),
        ]
    process = subprocess.Popen(
        [sys.executable, "-m", "aifactory.runtime.serve_cli", *options, "--reload-interval", "0.2", *extra],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    server = Server(process, 0, runtime_dir, tls=tls)
    STARTED.append(process)
    ready = threading.Event()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            server.output.append(line)
            if "ready on port" in line:
                server.port = int(line.rsplit(" ", 1)[1])
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    assert ready.wait(60), "".join(server.output)
    return server


STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_server_outlives_its_test() -> Iterator[None]:
    """A failed test must not leave its server running (module-scoped ones are stopped by their fixture)."""
    before = len(STARTED)
    yield
    for process in STARTED[before:]:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(site: RuntimeSite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    write_checkpoint(root / "storage")
    running = start_server(site, root / "storage", root / "node-runtime", "--sign-every", "5")
    _wait_for_model(running)
    yield running
    running.stop()


def _wait_for_model(server: Server) -> dict:
    for _ in range(100):
        status, health = server.call("GET", "/healthz")
        if health["models"].get("vitals-mlp"):
            return health["models"]["vitals-mlp"]
        time.sleep(0.1)
    raise AssertionError("the model was never loaded")


def _records(server: Server) -> dict[str, dict]:
    return {r["decision_id"]: r for r in map(json.loads, server.log_path.read_text().splitlines())}


def test_starts_healthy_without_a_model_and_loads_one_when_it_appears(
    site: RuntimeSite, tmp_path: Path
) -> None:
    running = start_server(site, tmp_path / "storage", tmp_path / "runtime", as_deployed=True)
    try:
        assert running.call("GET", "/healthz") == (
            200,
            {"status": "ok", "site": "rtlab", "models": {"vitals-mlp": None}},
        )
        status, answer = running.call("POST", PATH, BODY, token=site.tokens["health"])
        assert (status, answer["error"]) == (503, "model-not-loaded")
        write_checkpoint(tmp_path / "storage", step=7)
        assert _wait_for_model(running)["step"] == 7
        assert running.call("POST", PATH, BODY, token=site.tokens["health"])[0] == 200
    finally:
        assert running.stop() == 0


@pytest.mark.parametrize(
    ("tenant", "reason"),
    [
        ("research", "clearance-below-classification"),  # not cleared (and no grant)
        ("visitor", "no-grant"),  # cleared, never granted
        ("partner", "grant-expired"),  # cleared, grant expired
        ("revoked", "token-revoked"),  # the owner's token, revoked
        (None, "token-missing"),
    ],
)
def test_denied_requests_get_403_with_a_reason_code_and_a_recorded_decision(
    server: Server, site: RuntimeSite, tenant: str | None, reason: str
) -> None:
    status, answer = server.call("POST", PATH, BODY, token=site.tokens[tenant] if tenant else None)
    assert status == 403
    assert reason in answer["reasons"] and answer["error"] == "forbidden"
    assert "confidential" not in json.dumps(answer)  # the classification is never revealed
    record = _records(server)[answer["decision_id"]]
    assert record["allow"] is False and record["resource"] == "model/vitals-mlp"
    assert record["tenant"] == (None if tenant in (None, "revoked") else tenant)


def test_a_self_asserted_tenant_header_changes_nothing(server: Server, site: RuntimeSite) -> None:
    connection = server.connection()
    connection.request(
        "POST",
        PATH,
        body=json.dumps(BODY),
        headers={
            "Authorization": f"Bearer {site.tokens['research']}",
            "X-Tenant": "health",
            "Content-Type": "application/json",
        },
    )
    assert connection.getresponse().status == 403


@pytest.mark.parametrize("tenant", ["analyst", "health"])  # a grant and clearance; the owner
def test_cleared_and_granted_tenants_are_served(server: Server, site: RuntimeSite, tenant: str) -> None:
    status, answer = server.call("POST", PATH, BODY, token=site.tokens[tenant])
    assert status == 200, answer
    assert len(answer["outputs"]) == 2 and answer["step"] == 10
    assert abs(sum(answer["outputs"][0]["scores"]) - 1) < 1e-4
    record = _records(server)[answer["decision_id"]]
    assert (record["tenant"], record["allow"], record["action"]) == (tenant, True, "infer")


def test_bad_input_and_unknown_paths(server: Server, site: RuntimeSite) -> None:
    assert server.call("POST", PATH, {"inputs": [[1, 2]]}, token=site.tokens["health"])[0] == 400
    assert server.call("GET", "/nothing")[0] == 404
    assert server.call("GET", PATH)[0] == 405


def test_metrics_are_prometheus_text(server: Server, site: RuntimeSite) -> None:
    server.call("POST", PATH, BODY, token=site.tokens["health"])
    status, answer = server.call("GET", "/metrics")
    assert status == 200
    assert 'aifactory_serve_decisions_total{allow="true"}' in answer["text"]
    assert "aifactory_serve_batch_size_count" in answer["text"]


def test_graceful_stop_finishes_requests_in_flight_and_the_log_verifies(
    site: RuntimeSite, tmp_path: Path
) -> None:
    write_checkpoint(tmp_path / "storage")
    running = start_server(site, tmp_path / "storage", tmp_path / "runtime", "--max-wait-ms", "3000")
    _wait_for_model(running)
    results: list[int] = []

    def one() -> None:
        results.append(running.call("POST", PATH, BODY, token=site.tokens["health"])[0])

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    # Decided and recorded, so in flight: they sit in the batcher, which waits up to 3 s to fill a batch.
    deadline = time.monotonic() + 20
    while not running.log_path.exists() or len(running.log_path.read_text().splitlines()) < 6:
        assert time.monotonic() < deadline, "the requests never arrived"
        time.sleep(0.02)
    assert results == []
    running.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join()
    assert running.process.wait(timeout=30) == 0
    assert results == [200] * 6
    report = verify_log(running.log_path)
    assert report.ok and report.records == 6 and report.unsigned_tail == 0, report.render()


def _tls_files(folder: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("rtlab site CA"))
        .issuer_name(name("rtlab site CA"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_tls_with_the_site_ca(site: RuntimeSite, tmp_path: Path) -> None:
    ca, cert, key = _tls_files(tmp_path)
    write_checkpoint(tmp_path / "storage")
    context = ssl.create_default_context(cafile=str(ca))
    running = start_server(
        site,
        tmp_path / "storage",
        tmp_path / "runtime",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        tls=context,
    )
    try:
        _wait_for_model(running)
        assert running.call("POST", PATH, BODY, token=site.tokens["analyst"])[0] == 200
        with pytest.raises(ssl.SSLError):  # a client that does not trust the site CA
            untrusting = http.client.HTTPSConnection(
                "localhost", running.port, timeout=10, context=ssl.create_default_context()
            )
            untrusting.request("GET", "/healthz")
    finally:
        assert running.stop() == 0


@pytest.mark.slow
def test_200_clients_for_10_seconds_then_kill_9_loses_no_answered_decision(
    site: RuntimeSite, tmp_path: Path
) -> None:
    write_checkpoint(tmp_path / "storage")
    running = start_server(site, tmp_path / "storage", tmp_path / "runtime")
    _wait_for_model(running)

    def load(seconds: float, stop: asyncio.Event | None = None) -> Coroutine[None, None, LoadResult]:
        return run_load(
            "127.0.0.1",
            running.port,
            path=PATH,
            body={"inputs": [[0.5] * 16]},
            token=site.tokens["analyst"],
            clients=200,
            seconds=seconds,
            stop=stop,
        )

    steady = asyncio.run(load(10))
    assert steady.failures == [] and steady.statuses() == {200: len(steady.answers)}
    assert len(steady.answers) > 200

    async def kill_under_load() -> object:
        stop = asyncio.Event()
        under_way = asyncio.create_task(load(30, stop))
        await asyncio.sleep(2)
        os.kill(running.process.pid, signal.SIGKILL)
        stop.set()
        return await under_way

    killed = asyncio.run(kill_under_load())
    running.process.wait()
    answered = [d for _, d in steady.answers + killed.answers]  # type: ignore[attr-defined]
    assert len(killed.answers) > 0  # type: ignore[attr-defined]
    logged = _records(running)
    missing = [d for d in answered if d not in logged]
    assert missing == [], f"{len(missing)} answered requests have no record"
    report = verify_log(running.log_path)
    assert report.ok, report.render()
    assert report.unsigned_tail <= 100  # the documented bound: only the unsigned tail could be cut unnoticed


def test_a_token_revoked_while_the_server_runs_is_refused_within_a_second(
    server: Server, site: RuntimeSite
) -> None:
    issued = issue_token(
        site.trust, site=SITE, tenant="analyst", expires=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    )
    assert server.call("POST", PATH, BODY, token=issued.token)[0] == 200
    revoke_token(site.trust, site=SITE, token_id=issued.claims.id, reason="test: revoked while serving")
    time.sleep(0.7)  # the server looks at the revocation list at most every 0.5 s
    status, answer = server.call("POST", PATH, BODY, token=issued.token)
    assert (status, answer["reason"]) == (403, "token-revoked")
