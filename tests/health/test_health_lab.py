"""`aifactory health` on the session's deployed lab (`deployed_lab`, tests/conftest.py), end to end: the
standard level passes every host; a rate-limited compute link (tc tbf: the lab's kernel has no netem)
drains that host alone in Slurm with the bandwidth reason and exit 4, and the next run after the limit
is gone resumes it; an operator's drain is left alone; a host no health run admitted (a new host) is
drained by the scheduler play, its sbatch job waits, and runs once its health run passes; the signed
evidence verifies with `ssh-keygen -Y verify`.

The fixture has already admitted every compute host with a health run (deploy leaves them drained
until one passes). Real parts throughout: the session bundle's runtime runs the checks on each host
over SSH from the control host, fio and iperf3 from Debian, Gloo's all-reduce between the hosts'
compute addresses, the Rego health policy, slurmctld's drain and resume. Each test leaves the shared
lab as it found it (the link limit removed, drains lifted, admission records back, every node idle).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import waiting
import yaml

pytestmark = [pytest.mark.lab, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
AIFACTORY = [sys.executable, "-m", "aifactory.cli.main"]
# A limit far below the lab's measured link speed (policies/data/health_thresholds.json, baselines.lab).
TBF = ["tbf", "rate", "20mbit", "burst", "32kbit", "latency", "400ms"]
ADMISSION = "aifactory-health: admission"
ADMITTED_DIR = "/var/lib/aifactory/health/admitted"


@dataclass
class Site:
    deployed: Any  # tests/conftest.py DeployedLab

    @property
    def lab(self) -> Any:  # LabSession
        return self.deployed.lab

    @property
    def plan(self) -> Any:  # SitePlan
        return self.lab.plan

    @property
    def compute_hosts(self) -> list[str]:
        return [h.name for h in self.plan.hosts if h.role in ("cpu", "gpu")]

    def exec(
        self, argv: list[str], host: str | None = None, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.lab.exec(argv, host, check=check, timeout=waiting.scaled(600))

    def health(self, *options: str) -> tuple[int, dict[str, Any]]:
        done = subprocess.run(
            [*AIFACTORY, "health", str(self.lab.spec), "--format", "json", *options],
            capture_output=True,
            text=True,
            env={**os.environ, "AIFACTORY_STATE_HOME": str(self.lab.state_home)},
            timeout=waiting.scaled(300),
            check=False,
        )
        assert done.returncode in (0, 4), done.stdout + done.stderr
        return done.returncode, json.loads(done.stdout)

    def admission_play(self, work: Path) -> None:
        """The scheduler play's run tasks on the controller (where admission happens), with the role's
        defaults: it drains every compute node without an admission record."""
        from aifactory.scheduler.topology import slurm_topology

        topology = work / "slurm.yml"
        topology.write_text(yaml.safe_dump({"aifactory_slurm": slurm_topology(self.plan)}))
        play = REPO / "playbooks" / "scheduler.yml"
        limit = ["--tags", "slurm_run", "--limit", self.lab.control_host]
        self.exec(["ansible-playbook", *limit, str(play), "-e", f"@{topology}"])

    def job_state(self, job: str) -> tuple[str, str]:
        out = self.exec(["scontrol", "--oneliner", "show", "job", job]).stdout
        fields = dict(word.split("=", 1) for word in out.split() if "=" in word)
        return fields.get("JobState", ""), fields.get("Reason", "")

    def slurm_nodes(self) -> dict[str, tuple[str, str]]:
        out = self.exec(["sinfo", "--Node", "--noheader", "--format=%N|%T|%E"]).stdout
        return {n: (s, r) for n, s, r in (line.split("|", 2) for line in out.splitlines())}

    def wait_idle(self, host: str) -> None:
        """A resumed node may have missed slurmctld's ping ('idle*'); its next ping clears that."""
        waiting.wait_for(
            lambda: self.slurm_nodes()[host][0] == "idle",
            what=f"{host} idle (resumed and answering slurmctld's ping)",
            timeout=60,
            detail=lambda: str(self.slurm_nodes()[host]),
        )


@pytest.fixture(scope="module")
def site(deployed_lab: Any) -> Site:
    """The shared lab, once every compute node is idle and answering. A module before this one may
    have stopped and restarted a node's slurmd (tests/health/test_faults_lab.py): slurmctld shows it
    'idle*' until its next ping, up to SlurmdTimeout/3 later, so this waits rather than reads once."""
    lab = Site(deployed_lab)
    idle = dict.fromkeys(lab.compute_hosts, "idle")
    waiting.wait_for(
        lambda: {n: s for n, (s, _) in lab.slurm_nodes().items()} == idle,
        what="every compute node idle and answering slurmctld's ping",
        timeout=180,
        every=2,
        detail=lambda: str(lab.slurm_nodes()),
    )
    return lab


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


def test_the_evidence_verifies_with_ssh_keygen(site: Site, tmp_path: Path) -> None:
    _, run = site.health("--hosts", site.compute_hosts[0])
    evidence = run["evidence"]
    report = Path(evidence["report"])
    verify = ["ssh-keygen", "-Y", "verify", "-f", evidence["allowed_signers"], "-I", evidence["identity"]]
    verify += ["-n", "aifactory-health", "-s", evidence["signature"]]
    with report.open("rb") as data:
        verified = subprocess.run(verify, stdin=data, capture_output=True, text=True, check=False)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(report.read_text())["hosts"][0]["host"] == site.compute_hosts[0]
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(report.read_bytes().replace(b'"admit"', b'"drain"', 1))
    with tampered.open("rb") as data:
        refused = subprocess.run(verify, stdin=data, capture_output=True, text=True, check=False)
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
    site.wait_idle(slow)


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
    site.wait_idle(host)


def test_a_host_no_health_run_admitted_gets_no_job_until_it_passes(site: Site, tmp_path: Path) -> None:
    """A host the scheduler play meets without an admission record (a new host) is drained; a job
    asking for it through sbatch waits; its first passing health run resumes it and the job runs."""
    new = site.compute_hosts[1]
    record = f"{ADMITTED_DIR}/{new}"
    job = ""
    site.exec(["rm", "-f", record])  # as if the host had just been added
    try:
        tmp_path.chmod(0o755)
        site.admission_play(tmp_path)
        assert site.slurm_nodes()[new] == ("drained", ADMISSION)
        sbatch = ["sbatch", "--parsable", f"--nodelist={new}", "--nodes=1", "--output=/dev/null"]
        job = site.exec([*sbatch, "--wrap=hostname"]).stdout.strip()
        state, reason = waiting.wait_for(
            lambda: (found := site.job_state(job)) and found[1] not in ("None", "") and found,
            what="the scheduler to give the job a reason to wait",
            timeout=60,
        )
        assert state == "PENDING" and "NodeNotAvail" in reason, (state, reason)
        code, run = site.health("--hosts", new)
        assert code == 0 and [a["action"] for a in run["slurm"]] == ["resume"]
        waiting.wait_for(
            lambda: site.job_state(job)[0] == "COMPLETED",
            what="the job to run on the admitted host",
            timeout=120,
        )
        assert site.exec(["test", "-f", record]).returncode == 0
    finally:  # the shared lab as it was: the host admitted and in service, no job left behind
        if job and site.job_state(job)[0] in ("PENDING", "RUNNING"):
            site.exec(["scancel", job], check=False)
        site.exec(["sh", "-c", f"mkdir -p {ADMITTED_DIR} && touch {record}"])
        if site.slurm_nodes()[new][1] == ADMISSION:
            site.exec(["scontrol", "update", f"nodename={new}", "state=resume"])
    site.wait_idle(new)
