"""`aifactory replace` on the lab (issue 27's acceptance line for a dead host), real parts throughout:
the lab's namespaces and sshd, a bundle built, signed and imported, `aifactory deploy`, Slurm's
scontrol, HAProxy's runtime API, the BMC emulator (Redfish), the health gate, ssh-keyscan. Written
by a helper that could not run it (no lab there): the lead runs it with `--acceptance`.

- a cpu host's namespace is destroyed (`aifactory lab host destroy`): the dead machine;
- `replace` with a fingerprint that is not the new machine's is refused (exit 1) after the lab made
  the blank host, and known_hosts is left as it was: the deploy (which checks hosts with it and
  nothing else) refuses the new machine, whatever the lab wrote of its key;
- the same `replace` without it goes on (the lab's provisioning record proves the key): the host has
  the same name and addresses, a new host key that known_hosts now trusts alone, passes the health
  gate, is not drained in Slurm, and a Slurm job runs on it to its end;
- the audit's records: the replacement is one change with its outcome (CM-3), the host's new key and
  machine listed in the inventory (CM-8).

Its own lab (site `rp<pid>`), as tests/pipeline/test_resize_lab.py has. Passed on the lab (2026-12-03,
8 min) once the BMC calls were made from the control host's network (aifactory.netns), the deploy checked
host keys (ansible-runner had turned checking off), and a job naming its host was pinned to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from lab_front_door import serve_behind_the_front_door, servers_up, wait_every_server_up
from waiting import scaled, wait_for

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.acceptance,
]

REPO = Path(__file__).resolve().parents[2]
REPLACE_TIMEOUT_S = 3600
# The lab's BMC emulators: plain HTTP on port 8000 (aifactory.lab.bmc).
BMC = ("--bmc-scheme", "http", "--bmc-port", "8000")


def _load(relative: str, name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class ReplaceLab:
    site: str
    spec: Path
    work: Path
    plan: Any
    host: str  # the cpu host that dies

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AIFACTORY_STATE_HOME": str(self.work / "state"),
            "AIFACTORY_BUNDLES_HOME": str(self.work / "bundles"),
            "PYTHONPATH": str(REPO),
        }

    @property
    def state(self) -> Path:
        return self.work / "state" / self.site

    def aifactory(self, *argv: str) -> tuple[int, dict[str, Any]]:
        done = subprocess.run(
            [sys.executable, "-m", "aifactory.cli.main", *argv, "--format", "json"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=scaled(REPLACE_TIMEOUT_S),
            check=False,
        )
        return done.returncode, json.loads(done.stdout or "{}")

    def jobs(self) -> list[dict[str, Any]]:
        """`aifactory jobs`: the queue and Slurm's job completion log (the lab keeps no accounting)."""
        done = subprocess.run(
            [sys.executable, "-m", "aifactory.cli.main", "jobs", str(self.spec), "--format", "json"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=scaled(120),
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout))

    def on_control_host(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        from aifactory.lab import lab_exec

        return lab_exec(self.site, argv, timeout=scaled(120))

    def on_host(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        from aifactory.lab import lab_exec

        return lab_exec(self.site, argv, host=self.host, timeout=scaled(120))

    def ssh(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """`argv` on the host over SSH from the control host, as Ansible reaches it (the lab's ssh
        config: its known_hosts, host key checking on)."""
        config = str(self.state / "lab" / "ssh" / "ssh_config")
        return self.on_control_host(["ssh", "-F", config, "-o", "ControlPath=none", self.host, "--", *argv])

    def close_master(self) -> None:
        """The master connection Ansible kept to the dead machine (ControlPersist) closed, as `replace`
        closes it when it learns the new key: a deploy through it would hang on the dead peer."""
        config = str(self.state / "lab" / "ssh" / "ssh_config")
        self.on_control_host(["ssh", "-F", config, "-O", "exit", self.host])

    def lab_key(self) -> str:
        """The new machine's public key as the lab made it (its provisioning record)."""
        kind, blob = (
            (self.state / "lab" / "hosts" / self.host / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        )
        return f"{kind} {blob}"

    def trusted(self) -> list[str]:
        from aifactory.trust.issuing import known_hosts

        path = self.state / "lab" / "ssh" / "known_hosts"
        return known_hosts.host_keys(known_hosts.read(path), [self.host])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplaceLab]:
    shared = _load("tests/conftest.py", "aifactory_tests_conftest")
    reason = shared.lab_unavailable()
    if reason:
        pytest.skip(f"needs the local lab: {reason}")
    pytest.importorskip("torch")
    from aifactory import signing
    from aifactory.bundle import BuildOptions, build_bundle, import_bundle
    from aifactory.deploy import DeployOptions, deploy_site
    from aifactory.lab import lab_down, lab_up
    from aifactory.pipeline.connection import site_connection
    from aifactory.plan import plan_site
    from aifactory.state import SiteState

    site = f"rp{os.getpid()}"
    work = tmp_path_factory.mktemp("replace-lab")
    spec = shared.copy_lab_spec(work / "spec", site)
    spec.write_text(spec.read_text() + "front_door: {}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIFACTORY_STATE_HOME", str(work / "state"))
        patch.setenv("AIFACTORY_BUNDLES_HOME", str(work / "bundles"))
        plan_site(spec)  # allocates and writes the lock, as `aifactory plan` does
        planned = plan_site(spec, write_lock=False)  # the frozen plan a bundle carries
        keys = signing.generate_keypair(
            work / "key", identity=f"release@{site}.example", namespaces="aifactory-bundle"
        )
        bundle = work / "built" / "1.0.0.tar"
        bundle.parent.mkdir()
        build_bundle(
            planned, output=bundle, options=BuildOptions(key=keys.private, apt_packages=None, version="1.0.0")
        )
        lab_up(planned)
        host = [h.name for h in planned.plan.hosts if h.pool == "cpu"][-1]
        found = ReplaceLab(site, spec, work, planned.plan, host)
        try:
            # What the front door needs to find its servers up (HAProxy checks each over TLS, with the
            # front door's identity): a champion to serve and each serving node's certificate, as the
            # upgrade's lab has them (tests/pipeline/test_upgrade_lab.py).
            serve_behind_the_front_door(work / "state", site, spec, planned.plan)
            import_bundle(bundle, trust=keys.allowed_signers, site_state=SiteState.for_site(site))
            first = deploy_site(planned, connection=site_connection(site), options=DeployOptions())
            assert first.exit_code == 0 and not first.failed_hosts, first.event_log
            code, out = found.aifactory("health", str(spec))
            assert code == 0, out
            wait_every_server_up(site, planned.plan)
            yield found
        finally:
            lab_down(site)


def test_a_destroyed_host_is_replaced_with_a_proven_key_passes_health_and_takes_a_slurm_job(
    lab: ReplaceLab,
) -> None:
    from aifactory.trust.issuing.known_hosts import key_fingerprint

    old_keys = lab.trusted()
    assert len(old_keys) == 1
    code, out = lab.aifactory("lab", "host", "destroy", lab.site, lab.host)
    assert code == 0, out
    code, status = lab.aifactory("lab", "status", lab.site)
    assert next(h for h in status["hosts"] if h["name"] == lab.host)["state"] == "stopped", status
    assert lab.ssh(["true"]).returncode != 0  # the machine is gone

    # A fingerprint that is not the new machine's: refused once the lab made the blank host, and the
    # deploy still refuses that host (its known_hosts trusts the dead machine's key alone).
    wrong = key_fingerprint(old_keys[0])
    code, refused = lab.aifactory("replace", str(lab.spec), lab.host, "--host-key-fingerprint", wrong, *BMC)
    assert code == 1, json.dumps(refused)[:4000]
    assert refused["error"]["code"] in ("replace-fingerprint-conflict", "replace-host-key-mismatch")
    assert lab.trusted() == old_keys
    assert lab.lab_key() not in old_keys  # the lab made a new key, and wrote it nowhere the deploy reads
    assert lab.ssh(["true"]).returncode != 0  # it answers now, with a key known_hosts does not trust
    lab.close_master()
    code, deployed = lab.aifactory("deploy", str(lab.spec), "--limit", lab.host)
    assert code != 0, deployed  # host key changed: the deploy does not trust the new machine

    code, result = lab.aifactory("replace", str(lab.spec), lab.host, "--drain-timeout", "60", *BMC)
    assert code == 0, json.dumps(result)[:4000]
    assert result["status"] == "done" and result["resumed"] and result["reachable"] is False
    assert result["host_key"] == key_fingerprint(lab.lab_key())
    assert result["old_host_keys"] == [key_fingerprint(old_keys[0])]
    assert lab.trusted() == [lab.lab_key()]
    assert result["system"]["uuid"]  # the BMC's record of the new machine

    # Same name and addresses.
    planned = lab.plan.host(lab.host)
    assert lab.on_host(["hostname"]).stdout.strip() == lab.host
    addresses = lab.on_host(["ip", "-o", "addr", "show"]).stdout
    assert planned.management_address in addresses and planned.compute_address in addresses

    # In Slurm and taking jobs: a short training job pinned to it runs to its end.
    from aifactory.health.slurm import parse_show_node

    shown = lab.on_control_host(["scontrol", "--oneliner", "show", "node", lab.host])
    assert shown.returncode == 0 and not parse_show_node(shown.stdout)[lab.host].drained, shown.stdout
    name = "replace-lab-job"
    code, submitted = lab.aifactory("train", str(lab.spec), str(_job(lab, name)), "--nodes", "1")
    assert code == 0, submitted
    job_id = str(submitted["slurm_job_id"])

    def ended() -> dict[str, Any] | None:
        listed = [j for j in lab.jobs() if j["id"] == job_id]  # the completion log once it ended
        return (
            listed[0] if listed and listed[0]["state"] not in ("PENDING", "RUNNING", "COMPLETING") else None
        )

    job = wait_for(ended, what="the job on the replaced host to end", timeout=900, every=5.0)
    assert (job["state"], job["nodelist"]) == ("COMPLETED", lab.host), job
    assert lab.host in servers_up(lab.site)  # and serving behind the front door again


def test_the_replacement_is_on_record_for_the_audit(lab: ReplaceLab) -> None:
    log = [
        json.loads(line)
        for line in (lab.state / "operator.log.jsonl").read_text().splitlines()
        if line.strip()
    ]
    replaces = [r for r in log if r.get("command") == "replace"]
    runs = {r["detail"]["run"] for r in replaces}
    assert len(runs) == 1, runs  # the refused run and the one that finished it are one change
    results = [r["result"] for r in replaces]
    assert results[0] == "started" and results[-1] == "finished"
    assert results.count("host-key-learned") == 1 and results.count("finished") == 1
    assert next(r for r in replaces if r["result"] == "started")["detail"]["reachable"] is False
    replaced = json.loads((lab.state / "replace" / "replaced.json").read_text())
    assert list(replaced["hosts"]) == [lab.host]


def _job(lab: ReplaceLab, name: str) -> Path:
    """A short training job (60 steps) on the replaced host only, as an operator writes one."""
    import yaml

    from aifactory.pipeline.models import on_storage
    from aifactory.runtime import dataset as datasets
    from aifactory.trust.issuing.tokens import issue_token
    from aifactory.trust.tokens import TrustFiles

    runtime_dir = lab.state / "runtime"
    dataset = next(d for d in lab.plan.datasets if d.name == "vitals")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIFACTORY_STATE_HOME", str(lab.work / "state"))
        x, y = datasets.teacher_samples(samples=256, features=16, classes=4, seed=5)
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
        "hosts": [lab.host],
        "processes_per_host": 1,
        "runtime_dir": str(runtime_dir),
        "network": {"hidden": 16, "layers": 2},
        "train": {"steps": 60, "global_batch": 32, "learning_rate": 0.01, "checkpoint_every": 20},
    }
    path = lab.work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    path.chmod(0o644)
    return path
