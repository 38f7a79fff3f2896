"""`aifactory upgrade` on a deployed lab with a front door (issue 26's acceptance), real parts
throughout: the lab's namespaces and sshd, real bundles built, signed and imported, `aifactory deploy`
under the upgrade, Slurm's scontrol, Debian's HAProxy and its runtime API, the health gate.

A client on a lab host sends 25 requests a second through the front door on one keep-alive
connection, with no retries (a request that fails is counted, never sent again), for the whole of
each upgrade:
- bundle A -> B, one host a batch (slurmctld's host, then each serving host): zero failed requests;
  afterwards every host runs B and `deploy --full` changes nothing;
- B -> C, whose runtime fails the health gate (its memory check reads a file that is not there):
  the first batch goes back to B by itself, exit 4 names the check, zero failed requests;
- after `--abort` of that, B -> D killed with SIGKILL mid-batch, then the same command again:
  it completes and every host runs D;
- `rollback --to A` without an activation record is refused (exit 1, nothing changes); after
  `aifactory activation authorize` the same command takes every host back to A with zero failed
  requests, and `aifactory audit report` assesses CM-3 as pass with the rollback in its evidence.

Each version is built from its own copy of the checkout with a line naming the release, so each is
a new runtime (a version built from the same wheels as the installed one keeps that runtime).

Its own lab (site `up<pid>`, inventory/lab/site.yaml with `front_door: {}`), as
tests/runtime/test_front_door_lab.py has: the session lab's spec has no front door. The tests run
in order on one lab (each starts from where the previous one left it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from waiting import scaled, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.acceptance]

REPO = Path(__file__).resolve().parents[2]
VERSIONS = {"A": "1.0.0", "B": "1.0.1", "C": "1.0.2", "D": "1.0.3"}
UPGRADE_TIMEOUT_S = 3600
# The sabotage that makes bundle C's runtime fail the health gate: its memory check reads a file that
# is not there (a failed measurement, so the gate's verdict names `memory-available`).
SABOTAGED = "aifactory/runtime/health/probes.py"
SABOTAGE = ('meminfo: Path = Path("/proc/meminfo")', 'meminfo: Path = Path("/proc/no-such-meminfo")')
FAILING_CHECK = "memory-available"

# Run on a lab host until the stop file appears: requests through the front door at 25 a second on
# one keep-alive connection (http.client reopens it when a server answers `Connection: close`); a
# request that fails is recorded and not sent again. Writes {sent, seconds, failures, nodes}.
CLIENT = """
import http.client, json, os, ssl, sys, time
address, port, cafile, cert, key, stop, out = sys.argv[1:8]
context = ssl.create_default_context(cafile=cafile)
context.load_cert_chain(cert, key)
body, headers = json.dumps({"inputs": [[0.1] * 16]}), {"Content-Type": "application/json"}
connection = http.client.HTTPSConnection(address, int(port), context=context, timeout=30)
sent, failures, nodes = 0, [], {}
started = next_at = time.monotonic()
while not os.path.exists(stop):
    try:
        connection.request("POST", "/v1/models/vitals-mlp/infer", body=body, headers=headers)
        # the node that answers, read now: a response with `Connection: close` closes the socket
        peer = connection.sock.getpeercert()
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            failures.append(f"{time.monotonic() - started:.2f}s {response.status} {answer[:200]!r}")
        else:
            node = [v for k, v in peer["subjectAltName"] if k == "DNS"][0]
            nodes[node] = nodes.get(node, 0) + 1
    except (OSError, http.client.HTTPException) as error:
        failures.append(f"{time.monotonic() - started:.2f}s {error!r}")
        connection.close()
    sent += 1
    next_at += 0.04
    time.sleep(max(0.0, next_at - time.monotonic()))
seconds = time.monotonic() - started
with open(out, "w") as handle:
    json.dump({"sent": sent, "seconds": seconds, "failures": failures, "nodes": nodes}, handle)
"""


def _load(relative: str, name: str) -> Any:
    """A helper module of the suite by its path (tests/ is no package: not importable by name when
    the whole suite runs), as tests/runtime/test_front_door_lab.py loads tests/conftest.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class UpgradeLab:
    site: str
    spec: Path
    work: Path
    plan: Any  # SitePlan
    planned: Any  # PlannedSite
    client: dict[str, Any]  # `aifactory token cert --tenant health --format json`
    keys: Any  # the release key that signs every bundle (signing.generate_keypair's files)
    bundles: dict[str, Path]

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AIFACTORY_STATE_HOME": str(self.work / "state"),
            "AIFACTORY_BUNDLES_HOME": str(self.work / "bundles"),
            "PYTHONPATH": str(REPO),
        }

    def upgrade_argv(self, bundle: str, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "aifactory.cli.main", "upgrade", str(self.spec),
            "--bundle", str(self.bundles[bundle]), "--trust", str(self.keys.allowed_signers),
            "--batch", "1", "--drain-timeout", "60", "--format", "json", *extra,
        ]  # fmt: skip

    def aifactory(self, *argv: str) -> tuple[int, dict[str, Any]]:
        """`aifactory ARGV --format json` as an admin runs it: (exit code, its JSON)."""
        done = subprocess.run(
            [sys.executable, "-m", "aifactory.cli.main", *argv, "--format", "json"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=scaled(UPGRADE_TIMEOUT_S),
            check=False,
        )
        return done.returncode, json.loads(done.stdout or "{}")

    def upgrade(self, bundle: str, *extra: str) -> tuple[int, dict[str, Any]]:
        done = subprocess.run(
            self.upgrade_argv(bundle, *extra),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=scaled(UPGRADE_TIMEOUT_S),
            check=False,
        )
        return done.returncode, json.loads(done.stdout or "{}")

    def abort(self) -> int:
        argv = [
            sys.executable,
            "-m",
            "aifactory.cli.main",
            "upgrade",
            str(self.spec),
            "--abort",
            "--format",
            "json",
        ]
        done = subprocess.run(
            argv, capture_output=True, text=True, env=self.env, timeout=scaled(UPGRADE_TIMEOUT_S)
        )
        return done.returncode

    def current(self, host: str) -> str:
        """The version /opt/aifactory/current points at on a host."""
        from aifactory.lab import lab_exec

        done = lab_exec(self.site, ["readlink", "/opt/aifactory/current"], host=host, timeout=scaled(60))
        assert done.returncode == 0, done.stderr
        return Path(done.stdout.strip()).name

    def versions(self) -> dict[str, str]:
        return {h.name: self.current(h.name) for h in self.plan.hosts}

    def journal(self) -> dict[str, Any] | None:
        path = self.work / "state" / self.site / "upgrade" / "journal.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None


class Traffic:
    """The client on a lab host, started before an upgrade and stopped after it."""

    def __init__(self, lab: UpgradeLab, name: str) -> None:
        from aifactory.lab import lab_command

        folder = lab.work / "traffic" / name
        folder.mkdir(parents=True)
        self.stop_file, self.report = folder / "stop", folder / "report.json"
        door = lab.plan.front_door
        argv = [sys.executable, "-c", CLIENT, door.address, str(door.port), lab.client["ca"]]
        argv += [lab.client["certificate"], lab.client["key"], str(self.stop_file), str(self.report)]
        client_host = door.backends[-1].name  # a host on the management network, not the front door
        full_argv, env = lab_command(lab.site, argv, client_host)
        self.process = subprocess.Popen(full_argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def stop(self) -> dict[str, Any]:
        self.stop_file.touch()
        _, err = self.process.communicate(timeout=scaled(60))
        assert self.process.returncode == 0, err
        return dict(json.loads(self.report.read_text()))


def _served_without_a_failure(report: dict[str, Any]) -> None:
    assert report["failures"] == [], report["failures"][:20]
    assert report["sent"] / report["seconds"] >= 20, report  # at least 20 requests a second
    assert report["sent"] >= 20 * 30, report  # over a real upgrade, not an instant


def _build(lab_work: Path, spec: Path, keys: Any, version: str, source: Path | None = None) -> Path:
    from aifactory.bundle import BuildOptions, build_bundle
    from aifactory.plan import plan_site

    output = lab_work / "built" / f"{version}.tar"
    output.parent.mkdir(exist_ok=True)
    options = BuildOptions(key=keys.private, apt_packages=None, version=version, source=source)
    build_bundle(plan_site(spec, write_lock=False), output=output, options=options)
    return output


def _release_source(folder: Path, version: str, *, sabotaged: bool = False) -> Path:
    """A copy of the checkout (git's view of it) that is other software than the checkout: a line
    naming the release in aifactory/__init__.py, so its wheel, and so its runtime_id, is its own (a
    version built from the same wheels keeps the runtime a host has: docs/deploy.md). Sabotaged: its
    health memory check cannot read its file."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes((REPO / name).read_bytes())
    package = folder / "aifactory" / "__init__.py"
    package.write_text(package.read_text() + f"# release {version} (tests/pipeline/test_upgrade_lab.py)\n")
    if sabotaged:
        target = folder / SABOTAGED
        text = target.read_text()
        assert SABOTAGE[0] in text, f"{SABOTAGED} changed: update the sabotage of bundle C"
        target.write_text(text.replace(SABOTAGE[0], SABOTAGE[1]))
    return folder


def _release(lab_work: Path, spec: Path, keys: Any, version: str, *, sabotaged: bool = False) -> Path:
    """Bundle `version`, built from its own release source."""
    source = _release_source(lab_work / f"source-{version}", version, sabotaged=sabotaged)
    return _build(lab_work, spec, keys, version, source)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpgradeLab]:
    shared = _load("tests/conftest.py", "aifactory_tests_conftest")
    reason = shared.lab_unavailable()
    if reason:
        pytest.skip(f"needs the local lab: {reason}")
    pytest.importorskip("torch")
    fronted = _load("tests/runtime/test_front_door_lab.py", "aifactory_front_door_lab")
    from aifactory import signing
    from aifactory.bundle import import_bundle
    from aifactory.deploy import DeployOptions, deploy_site
    from aifactory.lab import lab_down, lab_up
    from aifactory.pipeline.connection import site_connection
    from aifactory.plan import plan_site
    from aifactory.state import SiteState

    site = f"up{os.getpid()}"
    work = tmp_path_factory.mktemp("upgrade-lab")
    state_home = work / "state"
    spec = shared.copy_lab_spec(work / "spec", site)
    spec.write_text(spec.read_text() + "front_door: {}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIFACTORY_STATE_HOME", str(state_home))
        patch.setenv("AIFACTORY_BUNDLES_HOME", str(work / "bundles"))
        planned = plan_site(spec)
        plan = planned.plan
        keys = signing.generate_keypair(
            work / "key", identity=f"release@{site}.example", namespaces="aifactory-bundle"
        )
        # each version other software (its own runtime), as a real release is; C fails the gate
        bundles = {name: _release(work, spec, keys, VERSIONS[name]) for name in ("A", "B", "D")}
        bundles["C"] = _release(work, spec, keys, VERSIONS["C"], sabotaged=True)
        lab_up(planned)
        try:
            runtime_dir = state_home / site / "runtime"
            fronted._signed_model(state_home / site / "lab" / "storage" / "share", runtime_dir)
            for backend in plan.front_door.backends:  # each node's certificate, naming the front door too
                fronted._cli(
                    state_home,
                    "token", "cert", str(spec), "--server", backend.name, "--address", backend.address,
                    "-o", str(runtime_dir / "server-certs"),
                )  # fmt: skip
            client = fronted._cli(
                state_home, "token", "cert", str(spec), "--tenant", "health", "-o", str(work / "client")
            )
            import_bundle(bundles["A"], trust=keys.allowed_signers, site_state=SiteState.for_site(site))
            first = deploy_site(planned, connection=site_connection(site), options=DeployOptions())
            assert first.exit_code == 0 and not first.failed_hosts, first.event_log
            found = UpgradeLab(site, spec, work, plan, planned, client, keys, bundles)
            _admit(found)
            _every_node_serves(found)
            yield found
        finally:
            lab_down(site)


def _admit(lab: UpgradeLab) -> None:
    """As an operator admits a site after its first deploy (the slurm role leaves compute nodes drained
    until a health run passes, docs/health.md): the upgrade resumes only the nodes it drained itself."""
    argv = [sys.executable, "-m", "aifactory.cli.main", "health", str(lab.spec), "--format", "json"]
    done = subprocess.run(argv, capture_output=True, text=True, env=lab.env, timeout=scaled(300), check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr


def _every_node_serves(lab: UpgradeLab) -> None:
    """Before the client starts: HAProxy's health checks (TLS, the front door's identity, /healthz)
    find every serving node up, read through the upgrade's own hand on the runtime API."""
    from aifactory.frontdoor.runtime_api import RuntimeApi
    from aifactory.lifecycle.site_parts import ADMIN_SOCKET, BACKEND, ControlHostChannel
    from aifactory.pipeline.connection import site_connection

    api = RuntimeApi(ADMIN_SOCKET, channel=ControlHostChannel(site_connection(lab.site)))
    serving = {b.name for b in lab.plan.front_door.backends}

    def up() -> bool:
        return {s.name for s in api.servers(BACKEND) if s.takes_new_connections} == serving

    wait_for(up, what="every serving node up at the front door", timeout=120, every=1)


def test_a_rolling_upgrade_through_the_front_door_drops_no_request(lab: UpgradeLab) -> None:
    assert set(lab.versions().values()) == {VERSIONS["A"]}
    traffic = Traffic(lab, "a-to-b")
    code, result = lab.upgrade("B")
    report = traffic.stop()
    assert code == 0, result
    assert result["status"] == "done" and [b for b in result["batches"]][0] == [lab.plan.control_host]
    assert lab.versions() == {h.name: VERSIONS["B"] for h in lab.plan.hosts}
    _served_without_a_failure(report)
    from aifactory.deploy import DeployOptions, deploy_site
    from aifactory.pipeline.connection import site_connection

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIFACTORY_STATE_HOME", str(lab.work / "state"))
        patch.setenv("AIFACTORY_BUNDLES_HOME", str(lab.work / "bundles"))
        again = deploy_site(
            lab.planned, connection=site_connection(lab.site), options=DeployOptions(full=True)
        )
    assert again.exit_code == 0 and again.changed == 0, again.event_log


def test_a_bundle_whose_runtime_fails_the_gate_goes_back_by_itself_with_exit_4(lab: UpgradeLab) -> None:
    traffic = Traffic(lab, "b-to-c")
    code, result = lab.upgrade("C")
    report = traffic.stop()
    assert code == 4, result
    error = result["error"]
    assert error["code"] == "upgrade-failed" and "batch 1/3" in error["message"]
    failed = [p["message"] for p in error["problems"] if p["code"] == "failed-check"]
    assert failed and all(FAILING_CHECK in line for line in failed), failed
    assert lab.versions() == {h.name: VERSIONS["B"] for h in lab.plan.hosts}  # the first batch is back
    _served_without_a_failure(report)
    assert lab.abort() == 0  # closes the stopped upgrade (nothing else was upgraded)
    assert lab.journal() is None


def test_an_upgrade_killed_mid_batch_is_completed_by_a_rerun(lab: UpgradeLab) -> None:
    serving = lab.plan.front_door.backends[0].name
    process = subprocess.Popen(
        lab.upgrade_argv("D"),
        env=lab.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def mid_batch() -> bool:
            assert process.poll() is None, f"the upgrade ended (exit {process.returncode}) before {serving}"
            journal = lab.journal()
            return bool(journal) and journal["hosts"][serving]["phase"] in ("drained-door", "deployed")

        wait_for(mid_batch, what=f"the upgrade to drain {serving}", timeout=UPGRADE_TIMEOUT_S, every=0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):  # already ended: the wait above says why
            os.killpg(process.pid, signal.SIGKILL)  # the upgrade and the deploy it runs
        process.wait(timeout=scaled(30))
    journal = lab.journal()
    assert journal is not None and journal["status"] == "upgrading"
    traffic = Traffic(lab, "d-rerun")
    code, result = lab.upgrade("D")
    report = traffic.stop()
    assert code == 0, result
    assert result["status"] == "done"
    assert lab.versions() == {h.name: VERSIONS["D"] for h in lab.plan.hosts}
    assert report["failures"] == [], report["failures"][:20]


def _admin_trust(lab: UpgradeLab) -> tuple[Path, Path]:
    """An administrator's key made by the stock ssh-keygen, and the site's trust file listing it for
    activations beside the release key for bundles (docs/operations.md, Rollback authorization)."""
    key = lab.work / "admin_key"
    if not key.exists():
        argv = [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            f"admin@{lab.site}.example",
            "-f",
            str(key),
        ]
        subprocess.run(argv, check=True)
    kind, blob, *_ = key.with_suffix(".pub").read_text().split()
    trust = lab.work / "site_allowed_signers"
    trust.write_text(
        lab.keys.allowed_signers.read_text()
        + f'admin@{lab.site}.example namespaces="aifactory-activation" {kind} {blob}\n'
    )
    return key, trust


def test_rollback_needs_an_activation_record_and_then_goes_back_audited(lab: UpgradeLab) -> None:
    key, trust = _admin_trust(lab)
    on_d = {h.name: VERSIONS["D"] for h in lab.plan.hosts}
    assert lab.versions() == on_d  # where the upgrade tests left the site
    rollback = ["rollback", str(lab.spec), "--to", VERSIONS["A"], "--trust", str(trust), "--batch", "1"]
    rollback += ["--drain-timeout", "60"]
    code, refused = lab.aifactory(*rollback)
    assert code == 1, refused
    assert refused["error"]["code"] == "activation-missing", refused
    assert lab.versions() == on_d and lab.journal() is None  # nothing changed

    code, signed = lab.aifactory(
        "activation", "authorize", str(lab.spec), "--to", VERSIONS["A"],
        "--reason", "INC-26: D drops requests", "--key", str(key), "--trust", str(trust),
    )  # fmt: skip
    assert code == 0 and signed["allowed"], signed
    traffic = Traffic(lab, "rollback-to-a")
    code, result = lab.aifactory(*rollback)
    report = traffic.stop()
    assert code == 0, result
    assert result["status"] == "done" and result["kind"] == "rollback"
    assert result["batches"][-1] == [lab.plan.control_host]  # slurmctld's host last going back
    assert lab.versions() == {h.name: VERSIONS["A"] for h in lab.plan.hosts}
    assert report["failures"] == [], report["failures"][:20]
    code, versions = lab.aifactory("versions", str(lab.spec))
    assert code == 0 and versions["current"]["version"] == VERSIONS["A"]  # a plain deploy keeps A

    folder = lab.work / "audit-after-rollback"
    code, audited = lab.aifactory(
        "audit", "report", str(lab.spec), "-o", str(folder), "--bundle-trust", str(trust)
    )
    assert code == 0, audited
    written = json.loads((folder / "report.json").read_text())
    (cm3,) = [c for c in written["controls"] if c["id"] == "CM-3"]
    rules = {r["id"]: r["status"] for r in cm3["rules"]}
    assert cm3["status"] == "pass", cm3
    assert rules["change.rollback-authorized"] == "pass" and rules["change.outcome-recorded"] == "pass"
    (changes,) = [e for e in written["evidence"] if e["name"] == "changes"]
    rollbacks = [c for c in changes["detail"]["changes"] if c["kind"] == "rollback"]
    assert [(c["from"], c["to"], c["outcome"]) for c in rollbacks] == [
        (VERSIONS["D"], VERSIONS["A"], "finished")
    ]
    assert rollbacks[0]["activation"].endswith(f"lifecycle/activations/{VERSIONS['A']}.json")


def _training_job(lab: UpgradeLab, name: str, node: str) -> Path:
    """A training job that only ends when cancelled (a million steps, a checkpoint every 25) on one
    compute node, as an operator writes one; its data written on the site storage the nodes mount."""
    import yaml

    from aifactory.pipeline.models import on_storage
    from aifactory.runtime import dataset as datasets
    from aifactory.trust.issuing.tokens import issue_token
    from aifactory.trust.tokens import TrustFiles

    runtime_dir = lab.work / "state" / lab.site / "runtime"
    dataset = next(d for d in lab.plan.datasets if d.name == "vitals")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIFACTORY_STATE_HOME", str(lab.work / "state"))
        x, y = datasets.teacher_samples(samples=1024, features=16, classes=4, seed=5)
        here = on_storage(lab.plan, dataset.storage, dataset.path, lab=True)
        datasets.write(here, name="vitals", x=x, y=y, classes=4, seed=5)
        expires = datetime.now(UTC) + timedelta(hours=2)
        token = lab.work / f"{name}.token"
        token.write_text(
            issue_token(TrustFiles(runtime_dir), site=lab.site, tenant="health", expires=expires).token
        )
    token.chmod(0o600)
    job = {
        "schema": "aifactory.job/v1",
        "name": name,
        "plan": "/etc/aifactory/plan.json",
        "token_file": str(token),
        "dataset": "vitals",
        "model": "vitals-mlp",
        "hosts": [node],
        "processes_per_host": 1,
        "runtime_dir": str(runtime_dir),
        "network": {"hidden": 16, "layers": 2},
        "train": {"steps": 1_000_000, "global_batch": 32, "learning_rate": 0.01, "checkpoint_every": 25},
    }
    path = lab.work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    path.chmod(0o644)
    return path


def test_a_job_running_on_a_host_the_upgrade_drains_resumes_from_its_checkpoint(lab: UpgradeLab) -> None:
    """Past `--drain-timeout` the upgrade requeues the job on the drained host; Slurm starts it again
    once a node takes jobs, and it goes on from its last checkpoint (its metrics say from which)."""
    from aifactory.pipeline.models import on_storage

    model = next(m for m in lab.plan.models if m.name == "vitals-mlp")
    runs = on_storage(lab.plan, model.storage, model.path, lab=True) / "runs"
    node = next(h.name for h in lab.plan.hosts if h.role == "cpu")
    name = "upgrade-lab-long-job"
    submitted = lab.aifactory("train", str(lab.spec), str(_training_job(lab, name, node)), "--nodes", "1")
    assert submitted[0] == 0, submitted[1]
    job_id = str(submitted[1]["slurm_job_id"])

    def steps() -> list[dict[str, Any]]:
        path = runs / name / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    try:
        wait_for(
            lambda: any(r["step"] >= 50 for r in steps()), what="the job's first checkpoints", timeout=600
        )
        first_start = steps()[0]["resumed_from"]
        lab.bundles["E"] = _release(lab.work, lab.spec, lab.keys, "1.0.4")
        code, result = lab.upgrade("E")
        assert code == 0, json.dumps(result)[:4000]
        assert job_id in result.get("requeued", []) or job_id in json.dumps(result), result

        def resumed() -> list[dict[str, Any]]:
            return [r for r in steps() if r["resumed_from"] > first_start]

        again = wait_for(resumed, what="the requeued job to train again from its checkpoint", timeout=900)
        assert again[0]["resumed_from"] % 25 == 0 and again[0]["step"] == again[0]["resumed_from"] + 1
    finally:
        from aifactory.lab import lab_exec

        lab_exec(lab.site, ["scancel", job_id], timeout=scaled(60))
