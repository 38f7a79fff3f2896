"""A real `aifactory-serve` process for tests: start it, call it (HTTP or HTTPS), read its decision log."""

from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from waiting import scaled, wait_for

from .conftest import RuntimeSite

MODEL_PATH = "srv/share/models/vitals-mlp"
PATH = "/v1/models/vitals-mlp/infer"
BODY = {"inputs": [[0.1] * 16, [-0.3] * 16]}


def write_checkpoint(
    site: RuntimeSite,
    storage_root: Path,
    *,
    step: int = 10,
    hidden: int = 16,
    promote: str | None = "champion",
) -> Path:
    """A trained checkpoint, signed into the model's registry with the site's model key and promoted to
    `promote` (None: signed, not promoted); the version's folder. What the server may serve."""
    from aifactory.trust.issuing.models import ensure_model_key, register
    from aifactory.trust.issuing.models import promote as promote_version

    path = save_checkpoint(storage_root, step=step, hidden=hidden)
    key = ensure_model_key(site.runtime_dir)
    model_dir = storage_root / MODEL_PATH
    version = register(
        model_dir=model_dir, checkpoint=path, key=key, job={"name": "test"}, dataset={"name": "vitals"}
    )
    if promote:
        promote_version(model_dir=model_dir, digest=version.digest, alias=promote, key=key, reason="test")
    return version.files.parent


def save_checkpoint(storage_root: Path, *, step: int = 10, hidden: int = 16, seed: int = 3) -> Path:
    """A checkpoint as training writes it (unsigned: not servable as it is)."""
    from aifactory.runtime import checkpoint  # torch: imported by the tests that serve, not by conftest
    from aifactory.runtime.model import ModelConfig, build

    config = ModelConfig(features=16, classes=4, hidden=hidden, layers=2)
    model = build(config, seed=seed)
    return checkpoint.save(
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
    health_token: str | None = None  # /healthz shows the models only to a caller with a valid token
    metrics_tls: ssl.SSLContext | None = None  # with client certificates: Prometheus' service identity

    @property
    def log_path(self) -> Path:
        return self.runtime_dir / "decisions.jsonl"

    def connection(self, context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
        """HTTPS with `context` (a client's own, e.g. with its certificate) or the server's, else HTTP."""
        tls = context or self.tls
        if tls:
            return http.client.HTTPSConnection("localhost", self.port, context=tls, timeout=30)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        token: str | None = None,
        *,
        context: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict]:
        connection = self.connection(context)
        headers = {"Content-Type": "application/json", **(headers or {})}
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

    def wait_logged(self, lines: Sequence[str], *, what: str, timeout: float) -> None:
        """Wait until the server's output holds every one of `lines`: the output reaches the test through
        a reader thread (start_server's pump), which a busy machine holds back behind the server."""

        def logged() -> bool:
            text = "".join(self.output)
            return all(line in text for line in lines)

        wait_for(logged, what=what, timeout=timeout, detail=lambda: "".join(self.output)[-4000:])

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout=scaled(60))


def start_server(
    site: RuntimeSite,
    storage_root: Path,
    runtime_dir: Path,
    *extra: str,
    tls: ssl.SSLContext | None = None,
    as_deployed: bool = False,
    nofile: int | None = None,
    serve_settings: dict[str, object] | None = None,
    decision_log: dict[str, object] | None = None,
) -> Server:
    """as_deployed: configured like deploy does it, by runtime.yaml and `--config F --host A --port P`;
    nofile: the server's limit on open files (the unit's LimitNOFILE); serve_settings: more `serve.`
    keys of runtime.yaml (as_deployed only); decision_log: runtime.yaml's `decision_log` (as_deployed
    only)."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    from aifactory.trust.issuing.models import ensure_model_key

    ensure_model_key(site.runtime_dir)
    trust_files = ("token-key/allowed_signers", "revoked-tokens.json", "revoked-tokens.json.sig")
    for name in (*trust_files, "model-key/model-signing.pub"):
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
                    "serve": {"address": "10.0.0.1", "port": 8440, **(serve_settings or {})},
                    "decision_log": decision_log or {},
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
        preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None,
    )
    server = Server(process, 0, runtime_dir, tls=tls, health_token=site.tokens["health"])
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
    assert ready.wait(scaled(60)), "the server never said it was ready:\n" + "".join(server.output)
    return server


STARTED: list[subprocess.Popen[str]] = []  # every server a test started; conftest kills leftovers


def wait_for_model(server: Server) -> dict:
    def loaded() -> dict | None:
        return server.call("GET", "/healthz", token=server.health_token)[1]["models"].get("vitals-mlp")

    return wait_for(
        loaded, what="the server to load vitals-mlp", timeout=10, detail=lambda: "".join(server.output)
    )


def records(server: Server) -> dict[str, dict]:
    return {r["decision_id"]: r for r in map(json.loads, server.log_path.read_text().splitlines())}
