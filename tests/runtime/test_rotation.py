"""Rotating the token key, the site CA and the server certificates (SC-12), against a real inference
server on loopback.

The "host" is a server subprocess with its own runtime folder; its rollout copies the files the runtime
role copies (the trust files and its server certificate) from the control host's runtime folder, as a
deploy limited to that host does. A client sends requests in a loop through each rotation: none may
fail during the overlap, and after --finish the old credentials are refused. The rotation records are
checked against hostile and garbled contents, and SC-12 is assessed from the operator log.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from waiting import wait_for

from aifactory.audit.evidence.rotations import IN_USE, SETTLED, rotation_evidence
from aifactory.errors import AifactoryError, RotationError
from aifactory.state import SiteState
from aifactory.trust.certs import SiteCA
from aifactory.trust.issuing.certs import (
    IssuedCertificate,
    ensure_site_ca,
    issue_client_certificate,
    issue_server_certificate,
)
from aifactory.trust.issuing.rotation import (
    RotationRecord,
    load_record,
    record_path,
    rotate,
)
from aifactory.trust.issuing.tokens import ensure_site_key, issue_token
from aifactory.trust.tokens import TrustFiles

from .conftest import SITE, RuntimeSite
from .serving import BODY, PATH, Server, start_server, wait_for_model, write_checkpoint

pytest.importorskip("torch")

HOST = "rtlab-cpu-001"
ROLE_VARS = Path(__file__).parents[2] / "playbooks" / "roles" / "runtime" / "vars" / "main.yml"
TRUST_FILES: list[str] = yaml.safe_load(ROLE_VARS.read_text())["_runtime_trust_files"]
HOUR = timedelta(hours=1)


@dataclass
class CopyRollout:
    """Gives each host the files the runtime role copies (the trust files, its server certificate and
    key), one host at a time; `fail_on` makes that host's deploy fail once (a killed rollout)."""

    control: Path
    nodes: dict[str, Path]
    fail_on: str | None = None
    deployed: list[str] = field(default_factory=list)

    def hosts(self) -> Sequence[str]:
        return list(self.nodes)

    def deploy(self, host: str) -> None:
        if host == self.fail_on:
            self.fail_on = None
            raise AifactoryError(f"{host} did not answer", code="rollout-host-failed")
        node = self.nodes[host]
        for name in TRUST_FILES:
            if (self.control / name).is_file():
                _copy(self.control / name, node / name)
        for suffix in ("pem", "key"):
            source = self.control / "server-certs" / f"{host}.{suffix}"
            if source.is_file():
                _copy(source, node / "tls" / f"{host}.{suffix}")
        self.deployed.append(host)


def _copy(source: Path, target: Path) -> None:
    """As ansible's copy: the new bytes beside the target, renamed over it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, temporary)
    temporary.replace(target)


@dataclass
class Loop:
    """A client sending requests in a loop on a thread; every status (or the error) is kept."""

    send: object
    outcomes: list[object] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Loop:
        def run() -> None:
            while not self.stop.is_set():
                try:
                    self.outcomes.append(self.send())  # type: ignore[operator]
                except (OSError, ssl.SSLError) as exc:
                    self.outcomes.append(repr(exc))

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        wait_for(lambda: len(self.outcomes) >= 2, what="the client loop to send", timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


@dataclass(frozen=True)
class Control:
    site: RuntimeSite  # a copy of the session site with its own runtime folder (a rotation changes it)
    trust: TrustFiles
    node: Path
    rollout: CopyRollout


@pytest.fixture
def control(site: RuntimeSite, tmp_path: Path) -> Control:
    trust = TrustFiles(tmp_path / "control")
    ensure_site_key(trust, site=SITE)
    token = issue_token(trust, site=SITE, tenant="health", expires=datetime.now(UTC) + HOUR).token
    own = RuntimeSite(tmp_path, site.plan_path, trust.root, tmp_path / "storage", {"health": token})
    write_checkpoint(own, own.storage_root)
    node = tmp_path / "node"
    rollout = CopyRollout(trust.root, {HOST: node})
    return Control(own, trust, node, rollout)


def _serve(control: Control, *tls: str, context: ssl.SSLContext | None = None) -> Server:
    from aifactory.trust.issuing.models import ensure_model_key

    ensure_model_key(control.trust.root)
    control.rollout.deploy(HOST)  # the first deploy: real files on the node (not links to the control host)
    server = start_server(control.site, control.site.storage_root, control.node, *tls, tls=context)
    wait_for_model(server)
    return server


# ------------------------------------------------------------------ token-key


def test_the_new_token_key_is_private_and_never_written_into_the_record_or_the_log(control: Control) -> None:
    state_log = control.trust.root / "operator.jsonl"
    record = rotate(
        control.trust, site=SITE, what="token-key", rollout=control.rollout, report=_log(state_log)
    )
    assert record.phase == "overlap" and record.old != record.new
    assert control.trust.private_key.stat().st_mode & 0o777 == 0o600
    assert record_path(control.trust, "token-key").stat().st_mode & 0o777 == 0o600
    assert not (control.trust.key_dir / "next").exists()
    secret = control.trust.private_key.read_text()
    body = secret.split("-----")[2].strip().splitlines()[0]
    for text in (record_path(control.trust, "token-key").read_text(), state_log.read_text()):
        assert "PRIVATE KEY" not in text and body not in text
    lines = control.trust.allowed_signers.read_text().splitlines()
    assert [line.split()[-1] for line in lines] == [record.old_key.split()[1], record.new_key.split()[1]]


def test_both_token_keys_are_accepted_during_the_overlap_and_only_the_new_after_finish(
    control: Control,
) -> None:
    server = _serve(control)
    try:
        old_token = control.site.tokens["health"]
        with Loop(lambda: server.call("POST", PATH, BODY, old_token)[0]) as loop:
            record = rotate(control.trust, site=SITE, what="token-key", rollout=control.rollout)
            new_token = issue_token(
                control.trust, site=SITE, tenant="health", expires=datetime.now(UTC) + HOUR
            ).token
            assert server.call("POST", PATH, BODY, new_token)[0] == 200
        assert record.phase == "overlap"
        assert loop.outcomes and set(loop.outcomes) == {200}, loop.outcomes
        assert control.rollout.deployed.count(HOST) == 3  # the first deploy, trust, switch
        rotate(control.trust, site=SITE, what="token-key", rollout=control.rollout, finish=True)
        wait_for(
            lambda: server.call("POST", PATH, BODY, old_token)[0] == 403,
            what="the old token to be refused",
            timeout=10,
        )
        status, answer = server.call("POST", PATH, BODY, old_token)
        assert (status, answer["reason"]) == (403, "token-bad-signature"), answer
        assert server.call("POST", PATH, BODY, new_token)[0] == 200
    finally:
        server.stop()


def test_a_rollout_killed_midway_resumes_with_the_hosts_it_had_not_done(
    control: Control, tmp_path: Path
) -> None:
    control.rollout.nodes = {"a-host": tmp_path / "a", "b-host": tmp_path / "b", "c-host": tmp_path / "c"}
    control.rollout.fail_on = "b-host"
    with pytest.raises(AifactoryError, match="b-host did not answer"):
        rotate(control.trust, site=SITE, what="token-key", rollout=control.rollout)
    stopped = load_record(control.trust, "token-key")
    assert stopped is not None
    assert (stopped.phase, stopped.hosts_done) == ("trust-rollout", ("a-host",))
    lines: list[str] = []
    record = rotate(control.trust, site=SITE, what="token-key", rollout=control.rollout, report=lines.append)
    assert lines[0] == f"resuming the token-key rotation {stopped.id} in phase trust-rollout"
    assert record.id == stopped.id and record.phase == "overlap"
    # a-host once for the trust phase, then b and c; then all three for the switch
    assert control.rollout.deployed == ["a-host", "b-host", "c-host", "a-host", "b-host", "c-host"]


@pytest.mark.parametrize("what", ["ca", "server-certs"])
def test_a_site_without_a_ca_has_nothing_to_rotate(control: Control, what: str) -> None:
    with pytest.raises(RotationError, match="nothing to rotate") as caught:
        rotate(control.trust, site=SITE, what=what, rollout=control.rollout)  # type: ignore[arg-type]
    assert caught.value.location.file == str(SiteCA.of(control.trust).key)
    assert load_record(control.trust, what) is None  # type: ignore[arg-type]


def test_finish_before_the_overlap_is_refused(control: Control) -> None:
    with pytest.raises(RotationError, match="no token-key rotation is under way"):
        rotate(control.trust, site=SITE, what="token-key", rollout=control.rollout, finish=True)


# ------------------------------------------------------------------ ca


def _client(trust: TrustFiles, issued: IssuedCertificate) -> ssl.SSLContext:
    """A client with its certificate that verifies the server against the bundle given to clients now."""
    context = ssl.create_default_context(cafile=str(SiteCA.of(trust).certificate))
    context.load_cert_chain(str(issued.certificate), str(issued.key))
    return context


def test_client_certificates_from_both_cas_work_during_the_overlap_and_the_old_one_fails_after(
    control: Control, tmp_path: Path
) -> None:
    trust = control.trust
    now = datetime.now(UTC)
    ensure_site_ca(trust, site=SITE)
    issue_server_certificate(
        trust,
        site=SITE,
        server=HOST,
        addresses=("127.0.0.1",),
        also_named=("localhost",),
        expires=now + timedelta(days=30),
        out_dir=trust.root / "server-certs",
    )
    old = issue_client_certificate(
        trust, site=SITE, tenant="health", expires=now + HOUR, out_dir=tmp_path / "old"
    )
    tls = control.node / "tls"
    server = _serve(
        control,
        "--tls-cert",
        str(tls / f"{HOST}.pem"),
        "--tls-key",
        str(tls / f"{HOST}.key"),
        "--tls-client-ca",
        str(control.node / "site-ca" / "ca.pem"),
        context=_client(trust, old),
    )
    try:
        with Loop(lambda: server.call("POST", PATH, BODY, context=_client(trust, old))[0]) as loop:
            record = rotate(trust, site=SITE, what="ca", rollout=control.rollout)
            new = issue_client_certificate(
                trust, site=SITE, tenant="health", expires=now + HOUR, out_dir=tmp_path / "new"
            )
            # the server looks at its TLS files at most every trust_recheck_interval (0.5 s)
            wait_for(
                lambda: _status(server, _client(trust, new)) == 200,
                what="the new CA's client certificate to be accepted",
                timeout=10,
            )
        assert record.phase == "overlap"
        assert loop.outcomes and set(loop.outcomes) == {200}, loop.outcomes
        bundle = x509.load_pem_x509_certificates(SiteCA.of(trust).certificate.read_bytes())
        assert len(bundle) == 2
        served = x509.load_pem_x509_certificate((tls / f"{HOST}.pem").read_bytes())
        new_ca = next(c for c in bundle if c.fingerprint(hashes.SHA256()).hex() == record.new)
        assert served.issuer == new_ca.subject and served.verify_directly_issued_by(new_ca) is None
        names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [HOST, "localhost"]

        # the client keeps the overlap's bundle to verify the server: a refusal below is the server's
        overlap_bundle = tmp_path / "overlap-bundle.pem"
        shutil.copyfile(SiteCA.of(trust).certificate, overlap_bundle)
        wait_for(
            lambda: _served_issuer(server, overlap_bundle) == new_ca.subject,
            what="the server to serve its certificate from the new CA",
            timeout=10,
        )
        rotate(trust, site=SITE, what="ca", rollout=control.rollout, finish=True)
        assert len(x509.load_pem_x509_certificates(SiteCA.of(trust).certificate.read_bytes())) == 1
        old_client = ssl.create_default_context(cafile=str(overlap_bundle))
        old_client.load_cert_chain(str(old.certificate), str(old.key))
        wait_for(
            lambda: _status(server, old_client) != 200,
            what="the old CA's client certificate to be refused",
            timeout=10,
        )
        refused = _status(server, old_client)
        assert isinstance(refused, str) and "CERTIFICATE_VERIFY_FAILED" not in refused, refused
        assert server.call("POST", PATH, BODY, context=_client(trust, new))[0] == 200
    finally:
        server.stop()


def _served_issuer(server: Server, bundle: Path) -> x509.Name:
    """The issuer of the certificate the server presents now."""
    context = ssl.create_default_context(cafile=str(bundle))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).issuer


def _status(server: Server, context: ssl.SSLContext) -> int | str:
    try:
        return server.call("POST", PATH, BODY, context=context)[0]
    except (ssl.SSLError, ConnectionError) as exc:
        return repr(exc)


def test_server_certs_are_reissued_with_the_same_names_from_the_current_ca(control: Control) -> None:
    trust = control.trust
    folder = trust.root / "server-certs"
    first = issue_server_certificate(
        trust,
        site=SITE,
        server=HOST,
        addresses=("10.0.0.5", "10.1.0.1"),
        also_named=("door.example",),
        expires=datetime.now(UTC) + timedelta(days=30),
        out_dir=folder,
    )
    before = x509.load_pem_x509_certificate(first.certificate.read_bytes())
    old_key = first.key.read_bytes()
    record = rotate(trust, site=SITE, what="server-certs", rollout=control.rollout)
    after = x509.load_pem_x509_certificate(first.certificate.read_bytes())
    assert record.phase == "finished" and record.finished
    assert after.serial_number != before.serial_number and first.key.read_bytes() != old_key
    assert first.key.stat().st_mode & 0o777 == 0o600
    san = x509.SubjectAlternativeName
    assert after.extensions.get_extension_for_class(san) == before.extensions.get_extension_for_class(san)
    assert after.not_valid_after_utc == before.not_valid_after_utc
    assert (control.node / "tls" / f"{HOST}.pem").read_bytes() == first.certificate.read_bytes()


# ------------------------------------------------------------------ hostile records


def _valid_record(trust: TrustFiles) -> dict[str, object]:
    ensure_site_key(trust, site=SITE)
    return json.loads(
        RotationRecord.model_validate(
            {
                "schema": "aifactory.rotation/v1",
                "id": "0" * 32,
                "site": SITE,
                "what": "token-key",
                "phase": "overlap",
                "started": "2026-12-02T10:00:00Z",
                "started_by": "admin",
                "old": "SHA256:" + "A" * 43,
                "new": "SHA256:" + "B" * 43,
            }
        ).as_json()
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"phase": "done-ish"}, "phase"),
        ({"site": "../other"}, "site"),
        ({"hosts_done": ["a-host", "../../etc"]}, "hosts_done"),
        ({"old": "SHA256:x; rm -rf /"}, "old"),
        ({"new_key": "ssh-rsa AAAA\nevil"}, "new_key"),
        ({"started_by": "admin\x1b[2J"}, "started_by"),
        ({"private_key": "-----BEGIN OPENSSH PRIVATE KEY-----"}, "private_key"),
        ({"hosts_done": "a-host"}, "hosts_done"),
        ({"what": "ca"}, "what"),
    ],
)
def test_hostile_rotation_records_are_refused_naming_the_file_and_field(
    control: Control, change: dict[str, object], field: str
) -> None:
    path = record_path(control.trust, "token-key")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_valid_record(control.trust) | change))
    with pytest.raises(RotationError) as caught:
        rotate(control.trust, site=SITE, what="token-key", rollout=control.rollout)
    assert caught.value.code == "rotation-record-invalid"
    assert caught.value.location.file == str(path)
    assert (caught.value.location.path or "").split(".")[0] == field
    assert control.rollout.deployed == []


@pytest.mark.parametrize("garbled", [b"", b"{", b"[]", b"\xff\xfe", b'{"schema": "aifactory.rotation/v2"}'])
def test_garbled_rotation_records_are_refused(control: Control, garbled: bytes) -> None:
    path = record_path(control.trust, "token-key")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(garbled)
    with pytest.raises(RotationError, match="the rotation record is not valid") as caught:
        load_record(control.trust, "token-key")
    assert caught.value.location.file == str(path)


def test_a_record_of_another_site_is_refused(control: Control) -> None:
    path = record_path(control.trust, "token-key")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_valid_record(control.trust) | {"site": "elsewhere"}))
    with pytest.raises(RotationError, match="for site 'elsewhere', not 'rtlab'"):
        rotate(control.trust, site=SITE, what="token-key", rollout=control.rollout)


# ------------------------------------------------------------------ SC-12


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SiteState:
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "home"))
    return SiteState.for_site(SITE)


def _record_run(state: SiteState, record: RotationRecord) -> None:
    from aifactory.cli.rotate import _detail

    state.record(command="rotate", result=record.phase, detail=_detail(record, started_in=None))


def test_sc12_is_not_assessed_without_a_rotation(state: SiteState) -> None:
    evidence = rotation_evidence(state)
    assert evidence.status == "not-assessed"
    assert [(control, rule.status) for control, rule in evidence.rules] == [("SC-12", "not-assessed")]


def test_sc12_passes_for_settled_rotations_whose_keys_are_in_use(state: SiteState) -> None:
    trust = TrustFiles(state.subdir("runtime"))
    ensure_site_key(trust, site=SITE)
    ensure_site_ca(trust, site=SITE)
    rollout = CopyRollout(trust.root, {})
    _record_run(state, rotate(trust, site=SITE, what="token-key", rollout=rollout))
    _record_run(state, rotate(trust, site=SITE, what="ca", rollout=rollout))
    _record_run(state, rotate(trust, site=SITE, what="ca", rollout=rollout, finish=True))
    evidence = rotation_evidence(state)
    assert evidence.status == "pass", evidence.findings
    assert {rule.id: rule.status for _, rule in evidence.rules} == {SETTLED: "pass", IN_USE: "pass"}
    assert [r["phase"] for r in evidence.detail["rotations"]] == ["overlap", "finished"]


def test_sc12_fails_for_a_rotation_stopped_midway_and_a_key_swapped_behind_its_back(
    state: SiteState, tmp_path: Path
) -> None:
    trust = TrustFiles(state.subdir("runtime"))
    ensure_site_key(trust, site=SITE)
    _record_run(state, rotate(trust, site=SITE, what="token-key", rollout=CopyRollout(trust.root, {})))
    stopped = CopyRollout(trust.root, {"a-host": tmp_path / "a"}, fail_on="a-host")
    ensure_site_ca(trust, site=SITE)
    with pytest.raises(AifactoryError):
        rotate(trust, site=SITE, what="ca", rollout=stopped)
    reached = load_record(trust, "ca")
    assert reached is not None
    _record_run(state, reached)
    # a token key put in place by hand, not by a rotation
    shutil.rmtree(trust.key_dir)
    ensure_site_key(trust, site=SITE)
    evidence = rotation_evidence(state)
    assert evidence.status == "fail"
    assert {rule.id: rule.status for _, rule in evidence.rules} == {SETTLED: "fail", IN_USE: "fail"}
    messages = [f.message for f in evidence.findings]
    assert len(messages) == 2
    assert any("ca rotation" in m and "stopped in phase trust-rollout" in m for m in messages), messages
    assert any(m.startswith("the token-key in use is") for m in messages), messages


def _log(path: Path) -> object:
    def write(line: str) -> None:
        with path.open("a") as handle:
            handle.write(line + "\n")

    return write


# ------------------------------------------------------------------ the CLI


def _cli(*arguments: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aifactory.cli.main", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "AIFACTORY_STATE_HOME": str(home)},
    )


def test_the_cli_says_which_phase_a_rotation_is_in_and_refuses_a_hostile_record(state: SiteState) -> None:
    trust = TrustFiles(state.subdir("runtime"))
    home = state.root.parent
    assert _cli("rotate", SITE, "--what", "token-key", "--status", home=home).stdout == (
        "no token-key rotation on record\n"
    )
    ensure_site_key(trust, site=SITE)
    stopped = CopyRollout(trust.root, {"a-host": state.root / "a"}, fail_on="a-host")
    with pytest.raises(AifactoryError):
        rotate(trust, site=SITE, what="token-key", rollout=stopped)
    shown = _cli("rotate", SITE, "--what", "token-key", "--status", home=home)
    assert shown.returncode == 0 and "phase trust-rollout" in shown.stdout, shown
    path = record_path(trust, "token-key")
    path.write_text(path.read_text().replace('"phase": "trust-rollout"', '"phase": "$(reboot)"'))
    refused = _cli("rotate", SITE, "--what", "token-key", "--status", home=home)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "error[rotation-record-invalid]" in refused.stderr and str(path) in refused.stderr, refused.stderr
    assert "phase" in refused.stderr
