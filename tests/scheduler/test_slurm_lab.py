"""Slurm on the lab, end to end: the scheduler play, sinfo, a 2-node DDP job through sbatch, the policy
decision before sbatch (and a refused tenant), a slurmd killed mid-job, and an idempotent re-run. The
play leaves the compute nodes drained until a health run admits them (docs/health.md); the fixture
admits them with `aifactory health`, as an operator would.

Its own lab (site `sch<pid>`, a copy of inventory/lab/site.yaml), so the shared `lab` fixture's hosts
are not disturbed. Real parts throughout: Debian's slurm-wlm and munge (installed on this machine,
shared by the lab's hosts), the roles over SSH from the control host, the runtime's policy engine
and decision log, torch DDP over the hosts' compute addresses. The runtime is not deployed with
`aifactory deploy` here: each compute host's private /opt gets /opt/aifactory/current pointing at
this checkout's virtual environment (what deploy installs there), so the tests need only the lab.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import waiting
import yaml

pytestmark = [pytest.mark.lab, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "scheduler.yml"
AIFACTORY = str(Path(sys.executable).with_name("aifactory"))
SUPERVISOR = "/run/aifactory-lab/bin/aifactory-service"
KILL_SLURMD = (
    'pid=$(cat /run/slurmd.pid) && [ "$(cat /proc/$pid/comm)" = slurmd ] && kill -9 "$pid" && '
    'while [ -e "/proc/$pid" ]; do sleep 0.2; done'
)
ADMISSION = "aifactory-health: admission"  # the slurm role's drain of a node no health run admitted


@dataclass
class Cluster:
    site: str
    spec: Path
    work: Path
    state_home: Path
    plan: Any  # SitePlan
    first_play: subprocess.CompletedProcess[str]
    check_play: subprocess.CompletedProcess[str]

    @property
    def compute_hosts(self) -> list[str]:
        return [h.name for h in self.plan.hosts if h.role in ("cpu", "gpu")]

    @property
    def storage(self) -> Path:
        return self.state_home / self.site / "lab" / "storage" / "share"

    @property
    def runtime_dir(self) -> Path:
        return self.state_home / self.site / "runtime"

    def exec(
        self, argv: list[str], host: str | None = None, *, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        from aifactory.lab import lab_exec

        result = lab_exec(self.site, argv, host=host, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{argv} on {host or 'control'} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def play(self, *options: str) -> subprocess.CompletedProcess[str]:
        return self.exec(
            ["ansible-playbook", *options, str(PLAYBOOK), "-e", f"@{self.work / 'slurm.yml'}"],
            check=False,
            timeout=waiting.scaled(600),
        )

    def aifactory(self, *argv: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "AIFACTORY_STATE_HOME": str(self.state_home)}
        return subprocess.run(
            [AIFACTORY, *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=waiting.scaled(300),
            check=False,
        )

    def admit(self) -> None:
        """As an operator admits new hosts: the play left every compute node drained until a health
        run passes (the slurm role's admission, on by default); `aifactory health` on the compute
        hosts (the ones with a runtime here) resumes them."""
        drained = self.exec(["sinfo", "--Node", "--noheader", "--format=%N|%E"]).stdout
        reasons = dict(line.split("|", 1) for line in drained.splitlines())
        assert reasons == dict.fromkeys(self.compute_hosts, ADMISSION), reasons
        checked = self.aifactory("health", str(self.spec), "--hosts", ",".join(self.compute_hosts))
        assert checked.returncode == 0, checked.stdout + checked.stderr

    def jobs(self) -> dict[str, dict[str, Any]]:
        listed = self.aifactory("jobs", self.site, "--format", "json")
        assert listed.returncode == 0, listed.stderr
        return {job["id"]: job for job in json.loads(listed.stdout)}

    def node_states(self) -> dict[str, tuple[str, str]]:
        out = self.exec(["sinfo", "--Node", "--noheader", "--format=%N %P %T"]).stdout
        return {n: (p.rstrip("*"), s) for n, p, s in (line.split() for line in out.splitlines())}

    def node_state_flags(self, host: str) -> set[str]:
        """The node's state as slurmctld holds it, with every flag (`State=DOWN+DRAIN+NOT_RESPONDING`)."""
        out = self.exec(["scontrol", "show", "node", "--oneliner", host]).stdout
        found = re.search(r"\bState=(\S+)", out)
        return set(found.group(1).replace("*", "").split("+")) if found else set()

    def write_job(self, name: str, tenant: str, **train: int) -> Path:
        job = {
            "schema": "aifactory.job/v1",
            "name": name,
            "plan": str(self.work / "plan.json"),
            "token_file": str(self.work / f"{tenant}.token"),
            "dataset": "vitals",
            "model": "vitals-mlp",
            "processes_per_host": 1,
            "rendezvous_port": 29400,
            "runtime_dir": str(self.runtime_dir),
            "network": {"hidden": 16, "layers": 2},
            "train": {"global_batch": 32, "learning_rate": 0.01, "threads": 1, **train},
        }
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(job))
        return path

    def metrics(self, name: str) -> list[dict[str, Any]]:
        path = self.storage / "models" / "vitals-mlp" / "runs" / name / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def latest_checkpoint(self) -> int:
        latest = self.storage / "models" / "vitals-mlp" / "checkpoints" / "latest"
        return int(latest.read_text().strip().removeprefix("step-")) if latest.exists() else 0

    def decisions(self) -> list[dict[str, Any]]:
        path = self.runtime_dir / "decisions.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(what: str, probe: Callable[[], Any], *, timeout: float = 120, every: float = 1.0) -> Any:
    return waiting.wait_for(probe, what=what, timeout=timeout, every=every)


def changed_counts(recap: str) -> dict[str, int]:
    recaps = re.finditer(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", recap, re.M)
    return {m.group(1): int(m.group(2)) for m in recaps}


def _shared_conftest() -> Any:
    """tests/conftest.py (not importable by name when the whole suite runs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("aifactory_tests_conftest", REPO / "tests" / "conftest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    shared = _shared_conftest()
    reason = shared.lab_unavailable()
    if reason:
        pytest.skip(f"needs the local lab: {reason}")
    from aifactory.lab import lab_down, lab_up
    from aifactory.plan import plan_site
    from aifactory.scheduler.topology import slurm_topology
    from aifactory.trust.issuing.tokens import issue_token
    from aifactory.trust.tokens import TrustFiles

    site = f"sch{os.getpid()}"
    work = tmp_path_factory.mktemp("sched")
    work.chmod(0o755)
    state_home = work / "state"
    spec = shared.copy_lab_spec(work, site)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIFACTORY_STATE_HOME", str(state_home))
        planned = plan_site(spec)
        (work / "plan.json").write_text(planned.plan.to_json())
        (work / "slurm.yml").write_text(yaml.safe_dump({"aifactory_slurm": slurm_topology(planned.plan)}))
        trust = TrustFiles(state_home / site / "runtime")
        for tenant in ("health", "research"):
            expires = datetime.now(UTC) + timedelta(hours=2)
            token = issue_token(trust, site=site, tenant=tenant, expires=expires)
            (work / f"{tenant}.token").write_text(token.token)
        lab_up(planned)
        try:
            nothing = subprocess.CompletedProcess([], 0)
            cluster = Cluster(site, spec, work, state_home, planned.plan, nothing, nothing)
            for host in cluster.compute_hosts:  # what deploy installs at /opt/aifactory/current
                install = f"mkdir -p /opt/aifactory && ln -sfn {sys.prefix} /opt/aifactory/current"
                cluster.exec(["sh", "-c", install], host=host)
            cluster.check_play = cluster.play("--check")  # on fresh hosts: predicts, changes nothing
            cluster.first_play = cluster.play()
            assert cluster.first_play.returncode == 0, cluster.first_play.stdout[-4000:]
            cluster.admit()
            job = cluster.write_job("gen", "health")
            first = cluster.compute_hosts[0]
            cluster.exec(
                [
                    "/opt/aifactory/current/bin/aifactory-train",
                    str(job),
                    "--generate-dataset",
                    "--samples",
                    "1024",
                    "--host",
                    first,
                ],
                host=first,
            )
            yield cluster
        finally:
            lab_down(site)


def test_sinfo_shows_every_compute_host_idle_in_its_partition(cluster: Cluster) -> None:
    states = wait_for(
        "every node idle",
        lambda: (s := cluster.node_states()) and all(state == "idle" for _, state in s.values()) and s,
        timeout=60,
    )
    assert states == {h.name: (h.pool, "idle") for h in cluster.plan.hosts if h.role in ("cpu", "gpu")}


def test_check_mode_on_fresh_hosts_predicts_changes_and_fails_nothing(cluster: Cluster) -> None:
    assert cluster.check_play.returncode == 0, cluster.check_play.stdout[-4000:]
    predicted = changed_counts(cluster.check_play.stdout)
    assert set(predicted) == {h.name for h in cluster.plan.hosts} and all(predicted.values())


def test_re_running_the_scheduler_play_changes_nothing(cluster: Cluster) -> None:
    assert sum(changed_counts(cluster.first_play.stdout).values()) > 0
    again = cluster.play()
    assert again.returncode == 0, again.stdout[-4000:]
    counts = changed_counts(again.stdout)
    assert set(counts) == {h.name for h in cluster.plan.hosts}
    assert counts == dict.fromkeys(counts, 0), again.stdout[-4000:]


def test_a_two_node_job_trains_through_slurm(cluster: Cluster) -> None:
    job = cluster.write_job("sched-ddp", "health", steps=60, checkpoint_every=20)
    submitted = cluster.aifactory("train", str(cluster.spec), str(job), "--nodes", "2", "--format", "json")
    assert submitted.returncode == 0, submitted.stderr
    submission = json.loads(submitted.stdout)
    assert (submission["tenant"], submission["partition"], submission["nodes"]) == ("health", "cpu", 2)
    slurm_id = submission["slurm_job_id"]
    listed = wait_for(
        "the job to finish",
        lambda: (
            (j := cluster.jobs().get(slurm_id))
            and j["state"] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")
            and j
        ),
        timeout=240,
        every=2,
    )
    assert listed["state"] == "COMPLETED", listed
    assert (listed["account"], listed["nodes"]) == ("health", 2)
    assert listed["decision_id"] == submission["decision_id"]
    metrics = [m for m in cluster.metrics("sched-ddp") if m["resumed_from"] == 0]
    assert len(metrics) == 60 and {m["world_size"] for m in metrics} == {2}
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert cluster.latest_checkpoint() == 60  # on the site storage every host mounts
    decided = [d for d in cluster.decisions() if d["decision_id"] == submission["decision_id"]]
    assert len(decided) == 1 and decided[0]["allow"] and decided[0]["component"] == "scheduler"
    assert decided[0]["request"] == {"job": "sched-ddp", "partition": "cpu", "nodes": 2}
    ran_on = {
        d["host"]
        for d in cluster.decisions()
        if d["component"] == "train" and d.get("request", {}).get("job") == "sched-ddp" and d["allow"]
    }
    assert ran_on == set(cluster.compute_hosts)  # each node decided again before reading


def test_a_tenant_without_a_grant_is_refused_before_sbatch(cluster: Cluster) -> None:
    before = set(cluster.jobs())
    job = cluster.write_job("sched-refused", "research", steps=10)
    refused = cluster.aifactory("train", str(cluster.spec), str(job), "--nodes", "2")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "research may not train on dataset/vitals" in refused.stderr and "Traceback" not in refused.stderr
    assert set(cluster.jobs()) == before  # sbatch was never called
    queue = cluster.exec(["squeue", "--noheader", "--states=all", "--format=%j"]).stdout
    assert "sched-refused" not in queue
    denied = [d for d in cluster.decisions() if d["tenant"] == "research" and d["component"] == "scheduler"]
    assert denied and not denied[-1]["allow"] and denied[-1]["reasons"]
    assert denied[-1]["decision_id"] in refused.stderr


def test_a_killed_slurmd_fails_the_job_and_a_resubmission_resumes(cluster: Cluster) -> None:
    victim = cluster.compute_hosts[1]
    start = cluster.latest_checkpoint()
    # Far more steps than the job can run before slurmctld declares the node down (on a fast
    # machine 6,000 steps once finished first): the job must end by the node's failure.
    steps = start + 1_000_000
    job = cluster.write_job("sched-kill", "health", steps=steps, checkpoint_every=25)
    submitted = cluster.aifactory("train", str(cluster.spec), str(job), "--nodes", "2", "--format", "json")
    assert submitted.returncode == 0, submitted.stderr
    first_id = json.loads(submitted.stdout)["slurm_job_id"]
    try:
        wait_for(
            "a checkpoint of the running job",
            lambda: cluster.latest_checkpoint() > start,
            timeout=180,
            every=0.5,
        )
        # The pid file's process is the victim's slurmd (checked: a stale file would kill another
        # process and leave the node up), and it is gone before Slurm is asked about the node.
        cluster.exec(["sh", "-c", KILL_SLURMD], host=victim)
        # DOWN whatever other flag it carries (sinfo shows a DOWN+DRAIN node as "drained").
        waiting.wait_for(
            lambda: "DOWN" in cluster.node_state_flags(victim),
            what=f"{victim} marked down",
            timeout=90,
            every=1.0,
            detail=lambda: cluster.exec(["scontrol", "show", "node", "-o", victim], check=False).stdout,
        )
        failed = wait_for(
            "the job to end",
            lambda: (
                (j := cluster.jobs().get(first_id))
                and j["state"] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")
                and j
            ),
            timeout=120,
            every=2,
        )
    finally:
        # Whatever happened above, the next tests need the node back and no job of this one left.
        cluster.exec(["scancel", first_id], check=False)
        cluster.exec([SUPERVISOR, "start", "slurmd"], host=victim)
        wait_for(f"{victim} back in service", lambda: cluster.node_states()[victim][1] == "idle", timeout=90)
    assert failed["state"] in ("NODE_FAIL", "FAILED"), failed
    resume_at = cluster.latest_checkpoint()
    assert start < resume_at < steps

    resubmitted = cluster.aifactory("train", str(cluster.spec), str(job), "--nodes", "2", "--format", "json")
    assert resubmitted.returncode == 0, resubmitted.stderr
    second_id = json.loads(resubmitted.stdout)["slurm_job_id"]
    try:
        resumed = wait_for(
            "the resubmitted job to train",
            lambda: [m for m in cluster.metrics("sched-kill") if m["resumed_from"] == resume_at],
            timeout=180,
        )
    finally:
        cluster.exec(["scancel", second_id], check=False)
    assert resumed[0]["step"] == resume_at + 1 and resumed[0]["world_size"] == 2


def test_the_scheduler_runs_over_a_plain_ssh_connection(cluster: Cluster) -> None:
    """Submission and listing take any Connection: here one this test builds from the lab's ssh
    config (as any SSH site would, not the lab's own), with `aifactory.lab` unimportable."""
    from aifactory.lab import lab_status
    from aifactory.plan import plan_site
    from aifactory.scheduler.jobs import list_jobs
    from aifactory.scheduler.slurm import checked, client_for
    from aifactory.scheduler.submit import train
    from tests.ssh_site import lab_unimportable, ssh_connection_to

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIFACTORY_STATE_HOME", str(cluster.state_home))
        connection = ssh_connection_to(lab_status(cluster.site))
        planned = plan_site(cluster.spec, write_lock=False)
        job = cluster.write_job("sched-ssh", "health", steps=cluster.latest_checkpoint() + 5)
        with lab_unimportable():
            client = client_for(connection)
            nodes = checked(
                client.run(["sinfo", "--Node", "--noheader", "--format=%N"]), "sinfo", client.where
            )
            submission = train(planned, job, client=client, nodes=2)

            def finished() -> Any:
                found = {j.id: j for j in list_jobs(cluster.site, client=client)}.get(submission.slurm_job_id)
                done = found and found.state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")
                return found if done else None

            listed = wait_for("the job submitted over SSH to finish", finished, timeout=300, every=2)
    assert set(cluster.compute_hosts) <= set(nodes.split())
    assert client.where == "ssh from the control host"
    assert listed.state == "COMPLETED", listed
    assert listed.decision_id == submission.decision_id
