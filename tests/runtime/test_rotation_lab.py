"""Rotating the token key and the site CA on the session's deployed lab while a client holding the old
credentials sends requests (issue 27's acceptance): none fails during the overlap; after --finish the
old token and the old CA's client certificate are refused.

Real parts: the session's `deployed_lab`, `aifactory rotate` run as the admin runs it (the CLI, rolling
out through `aifactory deploy --limit HOST` one host at a time), the inference servers serving HTTPS
with certificates from the site CA, and a client on the control host (Python's ssl and urllib) that
re-reads the bundle given to clients before each request, as a client handed the bundle does.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from aifactory.deploy import DeployOptions
from aifactory.state import SiteState
from aifactory.trust.certs import SiteCA
from aifactory.trust.issuing.certs import issue_client_certificate
from aifactory.trust.issuing.tokens import issue_token
from aifactory.trust.tokens import TrustFiles
from tests.telemetry.monitored_lab import SERVE_PORT, serve_over_tls

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.acceptance]

REPO = Path(__file__).resolve().parents[2]

# Run on the control host: requests in a loop until the stop file exists, one JSON line per answer
# (time, status or the error); the token comes on stdin, never on a command line.
CLIENT = """
import json, os, ssl, sys, time, urllib.error, urllib.request
url, bundle, cert, key, stop, out = sys.argv[1:7]
token = sys.stdin.read().strip()
with open(out, "a") as log:
    while not os.path.exists(stop):
        context = ssl.create_default_context(cafile=bundle)
        context.load_cert_chain(cert, key)
        body = json.dumps({"inputs": [[0.1] * 16]}).encode()
        request = urllib.request.Request(url, data=body, method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as answer:
                outcome = answer.status
        except urllib.error.HTTPError as error:
            outcome = error.code
        except Exception as error:
            outcome = repr(error)
        log.write(json.dumps({"time": time.time(), "outcome": outcome}) + "\\n")
        log.flush()
        time.sleep(0.2)
"""

# Run on the control host: one request; prints the status, the server's reason, or the TLS error.
ONE = """
import json, ssl, sys, urllib.error, urllib.request
url, bundle, cert, key = sys.argv[1:5]
token = sys.stdin.read().strip()
context = ssl.create_default_context(cafile=bundle)
context.load_cert_chain(cert, key)
request = urllib.request.Request(url, data=json.dumps({"inputs": [[0.1] * 16]}).encode(), method="POST",
    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=30, context=context) as answer:
        print(json.dumps([answer.status, None]))
except urllib.error.HTTPError as error:
    print(json.dumps([error.code, json.loads(error.read() or b"{}").get("reason")]))
except Exception as error:
    print(json.dumps(["refused", repr(error)]))
"""


@dataclass(frozen=True)
class Credentials:
    token: str
    cert: Path
    key: Path


@dataclass(frozen=True)
class Serving:
    deployed: object  # DeployedLab
    host: str
    url: str
    trust: TrustFiles


@pytest.fixture(scope="module")
def serving(deployed_lab: object) -> Iterator[Serving]:
    """One serving host over HTTPS from the site CA (as the telemetry modules do); plain HTTP again after."""
    lab = deployed_lab.lab  # type: ignore[attr-defined]
    host = next(h.name for h in lab.plan.hosts if h.role in ("gpu", "cpu"))
    state = SiteState.for_site(lab.site)
    certs = state.subdir("runtime") / "server-certs"
    assert not certs.exists(), "another test left server certificates behind"
    model = next(m for m in lab.plan.models if lab.plan.host(host).pool in m.serve_on)
    address = lab.plan.host(host).management_address
    try:
        serve_over_tls(deployed_lab, [host], certs)  # type: ignore[arg-type]
        # A champion of the spec's model to answer with (16 features, as the front door lab signs
        # one), so that every answer the client counts is the model's, not "no model loaded".
        _load("tests/runtime/test_front_door_lab.py", "aifactory_front_door_lab")._signed_model(
            Path(lab.state_home) / lab.site / "lab" / "storage" / "share", state.subdir("runtime")
        )
        yield Serving(
            deployed_lab,
            host,
            f"https://{address}:{SERVE_PORT}/v1/models/{model.name}/infer",
            TrustFiles(state.subdir("runtime")),
        )
    finally:
        for path in certs.iterdir() if certs.exists() else ():
            path.unlink()
        if certs.exists():
            certs.rmdir()
        # every host: the rotation changed what deploy applies everywhere (keys, CA bundle)
        restored = deployed_lab.deploy(DeployOptions())  # type: ignore[attr-defined]
        assert restored.exit_code == 0 and not restored.failed_hosts, restored.event_log


def _load(relative: str, name: str) -> Any:
    """A module of the suite by its path (tests/ is no package when the whole suite runs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _credentials(serving: Serving, folder: Path) -> Credentials:
    lab = serving.deployed.lab  # type: ignore[attr-defined]
    model = next(m for m in lab.plan.models if lab.plan.host(serving.host).pool in m.serve_on)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    token = issue_token(serving.trust, site=lab.site, tenant=model.owner, expires=expires).token
    issued = issue_client_certificate(
        serving.trust, site=lab.site, tenant=model.owner, expires=expires, out_dir=folder
    )
    return Credentials(token, issued.certificate, issued.key)


def _rotate(serving: Serving, *arguments: str) -> None:
    lab = serving.deployed.lab  # type: ignore[attr-defined]
    done = subprocess.run(
        [sys.executable, "-m", "aifactory.cli.main", "rotate", str(lab.spec), *arguments],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, f"aifactory rotate {' '.join(arguments)}:\n{done.stdout}\n{done.stderr}"


def _one(serving: Serving, bundle: Path, token: str, cert: Path, key: Path) -> list[object]:
    lab = serving.deployed.lab  # type: ignore[attr-defined]
    done = lab.exec(
        [sys.executable, "-c", ONE, serving.url, str(bundle), str(cert), str(key)], input_text=token
    )
    answer: list[object] = json.loads(done.stdout)
    return answer


@pytest.fixture
def folder(serving: Serving) -> Iterator[Path]:
    """Beside the lab's state folders (the lab's hosts see that file system; a private /tmp they may not)."""
    lab = serving.deployed.lab  # type: ignore[attr-defined]
    path = Path(lab.state_home) / "rotation-lab-client"
    path.mkdir(mode=0o700)
    yield path
    shutil.rmtree(path)


def test_old_credentials_keep_working_through_the_overlap_and_are_refused_after(
    serving: Serving, folder: Path
) -> None:
    lab = serving.deployed.lab  # type: ignore[attr-defined]
    tmp_path = folder
    bundle = SiteCA.of(serving.trust).certificate  # the bundle given to clients, re-read per request
    old = _credentials(serving, tmp_path / "old")
    stop, out = tmp_path / "stop", tmp_path / "answers.jsonl"
    client = threading.Thread(
        target=lab.exec,
        args=(
            [sys.executable, "-c", CLIENT, serving.url, *map(str, (bundle, old.cert, old.key, stop, out))],
        ),
        kwargs={"input_text": old.token, "timeout": 3600},
        daemon=True,
    )
    wait_for(
        lambda: _one(serving, bundle, old.token, old.cert, old.key) == [200, None],
        what="the serving node to answer with the signed champion",
        timeout=180,
        every=2,
    )
    client.start()
    try:
        _rotate(serving, "--what", "token-key")
        _rotate(serving, "--what", "ca")
        new = _credentials(serving, tmp_path / "new")  # from the new key and the new CA
        assert _one(serving, bundle, new.token, new.cert, new.key) == [200, None]
        assert _one(serving, bundle, old.token, old.cert, old.key) == [200, None]
    finally:
        stop.touch()
        client.join(timeout=120)
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(answers) > 10, answers
    failed = [a for a in answers if a["outcome"] != 200]
    assert failed == [], failed[:20]

    _rotate(serving, "--what", "token-key", "--finish")
    _rotate(serving, "--what", "ca", "--finish")
    assert _one(serving, bundle, old.token, new.cert, new.key) == [403, "token-bad-signature"]
    refused = _one(serving, bundle, new.token, old.cert, old.key)
    assert refused[0] == "refused", refused
    assert _one(serving, bundle, new.token, new.cert, new.key) == [200, None]
