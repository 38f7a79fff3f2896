"""`aifactory health` on the lab, end to end: the standard level passes every host of a fresh lab; a
rate-limited compute link (tc tbf: the lab's kernel has no netem) drains that host alone in Slurm with
the bandwidth reason and exit 4, and the next run after the limit is gone resumes it; the signed
evidence verifies with `ssh-keygen -Y verify`.

Its own lab (site `hl<pid>`, a copy of inventory/lab/site.yaml) with Slurm from the scheduler play, so
the shared lab's Slurm and links are never touched. Real parts throughout: the health module runs on
each host over SSH from the control host, fio and iperf3 from Debian, Gloo's all-reduce between the
hosts' compute addresses, the Rego health policy, slurmctld's drain and resume. As in the scheduler's
own lab test, the hosts' /opt/aifactory/current is a link to this checkout's virtual environment
(what deploy installs there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import waiting
import yaml

pytestmark = [pytest.mark.lab, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
AIFACTORY = str(Path(sys.executable).with_name("aifactory"))
# A limit far below the lab's measured link speed (policies/data/health_thresholds.json, baselines.lab).
TBF = ["tbf", "rate", "20mbit", "burst", "32kbit", "latency", "400ms"]
ADMISSION = "aifactory-health: admission"
ADMITTED_DIR = "/var/lib/aifactory/health/admitted"


@dataclass
class Site:
    name: str
    spec: Path
    state_home: Path
    plan: Any  # SitePlan
    work: Path

    @property
    def compute_hosts(self) -> list[str]:
        return [h.name for h in self.plan.hosts if h.role in ("cpu", "gpu")]

    def exec(
        self, argv: list[str], host: str | None = None, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        from aifactory.lab import lab_exec

        result = lab_exec(self.name, argv, host=host, timeout=waiting.scaled(600))
        assert not check or result.returncode == 0, f"{argv} on {host}: {result.stdout}\n{result.stderr}"
        return result

    def health(self, *options: str) -> tuple[int, dict[str, Any]]:
        done = subprocess.run(
            [AIFACTORY, "health", str(self.spec), "--format", "json", *options],
            capture_output=True,
            text=True,
            env={**os.environ, "AIFACTORY_STATE_HOME": str(self.state_home)},
            timeout=waiting.scaled(300),
            check=False,
        )
        assert done.returncode in (0, 4), done.stdout + done.stderr
        return done.returncode, json.loads(done.stdout)

    def play(self, work: Path, *options: str) -> None:
        """The scheduler play, with health admission on (the role's slurm_health_admission)."""
        play = REPO / "playbooks" / "scheduler.yml"
        extra = ["-e", f"@{work / 'slurm.yml'}", "-e", '{"slurm_health_admission": true}']
        self.exec(["ansible-playbook", *options, str(play), *extra])

    def job_state(self, job: str) -> tuple[str, str]:
        out = self.exec(["scontrol", "--oneliner", "show", "job", job]).stdout
        fields = dict(word.split("=", 1) for word in out.split() if "=" in word)
        return fields.get("JobState", ""), fields.get("Reason", "")

    def slurm_nodes(self) -> dict[str, tuple[str, str]]:
        out = self.exec(["sinfo", "--Node", "--noheader", "--format=%N|%T|%E"]).stdout
        return {n: (s, r) for n, s, r in (line.split("|") for line in out.splitlines())}


def _shared_conftest() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "aifactory_tests_conftest_health", REPO / "tests" / "conftest.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    shared = _shared_conftest()
    reason = shared.lab_unavailable()
    if reason:
        pytest.skip(f"needs the local lab: {reason}")
    from aifactory.lab import lab_down, lab_up
    from aifactory.plan import plan_site
    from aifactory.scheduler.topology import slurm_topology

    name = f"hl{os.getpid()}"
    work = tmp_path_factory.mktemp("health")
    work.chmod(0o755)
    state_home = work / "state"
    spec = shared.copy_lab_spec(work, name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIFACTORY_STATE_HOME", str(state_home))
        planned = plan_site(spec)
        (work / "slurm.yml").write_text(yaml.safe_dump({"aifactory_slurm": slurm_topology(planned.plan)}))
        lab_up(planned)
        try:
            lab = Site(name, spec, state_home, planned.plan, work)
            for host in planned.plan.hosts:  # what deploy installs at /opt/aifactory/current
                install = f"mkdir -p /opt/aifactory && ln -sfn {sys.prefix} /opt/aifactory/current"
                lab.exec(["sh", "-c", install], host=host.name)
            lab.play(work)
            drained = lab.slurm_nodes()  # admission: no node takes jobs before its first passing run
            assert {n: r for n, (_, r) in drained.items()} == dict.fromkeys(lab.compute_hosts, ADMISSION)
            code, run = lab.health()
            assert code == 0, run["hosts"]
            waiting.wait_for(
                lambda: all(state == "idle" for state, _ in lab.slurm_nodes().values()),
                what="every Slurm node idle",
                timeout=60,
            )
            yield lab
        finally:
            lab_down(name)


def _by_host(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {host["host"]: host for host in run["hosts"]}


def test_standard_level_passes_every_host_of_a_fresh_lab(site: Site) -> None:
    code, run = site.health("--level", "standard")
    hosts = _by_host(run)
    assert code == 0, {h: (r["verdict"], r["reasons"], r["failures"]) for h, r in hosts.items()}
    assert sorted(hosts) == sorted(h.name for h in site.plan.hosts)
    for name, host in hosts.items():
        assert (host["verdict"], host["reasons"]) == ("admit", []), name
        measured = {m["check"] for m in host["measurements"] if m["value"] is not None}
        assert set(host["expected"]) <= measured, name  # nothing expected was left unmeasured
    for name in site.compute_hosts:  # the collective and the link were measured on every compute host
        assert {"allreduce-busbw", "tcp-bandwidth", "storage-write"} <= set(hosts[name]["expected"])
    assert {a["action"] for a in run["slurm"]} == {"none"}


def test_the_evidence_verifies_with_ssh_keygen(site: Site) -> None:
    _, run = site.health("--hosts", site.compute_hosts[0])
    evidence = run["evidence"]
    report = Path(evidence["report"])
    with report.open("rb") as data:
        verified = subprocess.run(
            [
                "ssh-keygen",
                "-Y",
                "verify",
                "-f",
                evidence["allowed_signers"],
                "-I",
                evidence["identity"],
                "-n",
                "aifactory-health",
                "-s",
                evidence["signature"],
            ],
            stdin=data,
            capture_output=True,
            text=True,
            check=False,
        )
    assert verified.returncode == 0, verified.stderr
    assert json.loads(report.read_text())["hosts"][0]["host"] == site.compute_hosts[0]
    tampered = report.with_name("tampered.json")
    tampered.write_bytes(report.read_bytes().replace(b'"admit"', b'"drain"', 1))
    with tampered.open("rb") as data:
        refused = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", evidence["allowed_signers"], "-I", evidence["identity"]]
            + ["-n", "aifactory-health", "-s", evidence["signature"]],
            stdin=data,
            capture_output=True,
            text=True,
            check=False,
        )
    assert refused.returncode != 0


def test_a_rate_limited_compute_link_drains_that_host_alone_then_resumes(site: Site) -> None:
    slow, other = site.compute_hosts[1], site.compute_hosts[0]
    interface = next(i.name for i in site.plan.host(slow).interfaces if i.fabric == "compute")
    site.exec(["tc", "qdisc", "add", "dev", interface, "root", *TBF], host=slow)
    try:
        code, run = site.health("--level", "standard")
        hosts = _by_host(run)
        assert code == 4
        assert hosts[slow]["verdict"] == "drain" and "tcp-bandwidth" in hosts[slow]["reasons"]
        assert {h for h, r in hosts.items() if r["verdict"] != "admit"} == {slow}
        # the pool's slow all-reduce is measured on both hosts; the policy blames the slow link only
        assert any(f["check"] == "allreduce-busbw" for f in hosts[other]["failures"])
        nodes = site.slurm_nodes()
        assert nodes[slow][0] == "drained" and nodes[slow][1].startswith("aifactory-health: ")
        assert "tcp-bandwidth" in nodes[slow][1]
        assert nodes[other][0] == "idle"
    finally:
        site.exec(["tc", "qdisc", "del", "dev", interface, "root"], host=slow, check=False)
    code, run = site.health("--level", "standard")
    assert code == 0, run["hosts"]
    assert {"host": slow, "action": "resume"} in [{k: a[k] for k in ("host", "action")} for a in run["slurm"]]
    # slurmctld may have missed a ping while the link was throttled ("idle*", not responding); its
    # next ping (every SlurmdTimeout/3 on the lab) clears that, so wait for it rather than race it
    waiting.wait_for(
        lambda: site.slurm_nodes()[slow][0] == "idle",
        what=f"{slow} idle (resumed and answering slurmctld's ping)",
        timeout=60,
        detail=lambda: str(site.slurm_nodes()[slow]),
    )


def test_an_operators_drain_is_left_alone(site: Site) -> None:
    host = site.compute_hosts[0]
    site.exec(["scontrol", "update", f"nodename={host}", "state=drain", "reason=disk swap"])
    try:
        code, run = site.health("--hosts", host)
        assert code == 0
        assert [a["action"] for a in run["slurm"]] == ["none"]
        assert site.slurm_nodes()[host] == ("drained", "disk swap")
    finally:
        site.exec(["scontrol", "update", f"nodename={host}", "state=resume"])


def test_a_host_no_health_run_admitted_gets_no_job_until_it_passes(site: Site) -> None:
    """A host the scheduler play meets without an admission record (a new host) is drained; a job
    asking for it through sbatch waits; its first passing health run resumes it and the job runs."""
    new = site.compute_hosts[1]
    site.exec(["rm", "-f", f"{ADMITTED_DIR}/{new}"])  # as if the host had just been added
    site.play(site.work, "--tags", "slurm_run", "--limit", site.plan.control_host)
    assert site.slurm_nodes()[new] == ("drained", ADMISSION)
    job = site.exec(
        ["sbatch", "--parsable", f"--nodelist={new}", "--nodes=1", "--output=/dev/null", "--wrap=hostname"]
    ).stdout.strip()
    state, reason = waiting.wait_for(
        lambda: (found := site.job_state(job)) and found[1] not in ("None", "") and found,
        what="the scheduler to give the job a reason to wait",
        timeout=60,
    )
    assert state == "PENDING" and "NodeNotAvail" in reason, (state, reason)
    code, run = site.health("--hosts", new)
    assert code == 0 and [a["action"] for a in run["slurm"]] == ["resume"]
    waiting.wait_for(
        lambda: site.job_state(job)[0] == "COMPLETED", what="the job to run on the admitted host", timeout=120
    )
    assert site.exec(["test", "-f", f"{ADMITTED_DIR}/{new}"]).returncode == 0
