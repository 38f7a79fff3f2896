"""Submission without a cluster: the topology, placement, the policy decision before sbatch (real
policy engine, real tokens, real decision log), the batch script, the allocation rewrite (real
`scontrol show hostnames`) and the listing parsers. Slurm itself runs in test_slurm_lab.py; here a
recording client stands in for it, to prove what would be sent and that a deny sends nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from aifactory.errors import RuntimeDenied, UsageError
from aifactory.plan import PlannedSite, plan_site
from aifactory.runtime import allocation
from aifactory.runtime.job import load_job
from aifactory.scheduler import jobs, submit
from aifactory.scheduler.topology import slurm_topology
from aifactory.trust.issuing.tokens import issue_token
from aifactory.trust.tokens import TrustFiles

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "inventory" / "lab" / "site.yaml"


class RecordingSlurm:
    """Records the commands; answers sbatch with a job id. Stands in for the control host's Slurm."""

    where = "test"

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str | None]] = []

    def run(self, argv: Sequence[str], *, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(argv), input_text))
        out = "41;sched\n" if argv[0] == "sbatch" else ""
        return subprocess.CompletedProcess(list(argv), 0, out, "")


@pytest.fixture(scope="module")
def planned() -> PlannedSite:
    return plan_site(LAB, write_lock=False)


@pytest.fixture()
def site_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


def _job(planned: PlannedSite, folder: Path, tenant: str, **fields: object) -> Path:
    trust = TrustFiles(submit.runtime_folder(planned.plan.name))
    expires = datetime.now(UTC) + timedelta(hours=1)
    token = issue_token(trust, site=planned.plan.name, tenant=tenant, expires=expires)
    (folder / f"{tenant}.token").write_text(token.token)
    (folder / "plan.json").write_text(planned.plan.to_json())
    job = {
        "schema": "aifactory.job/v1",
        "name": "unit-job",
        "plan": "plan.json",
        "token_file": f"{tenant}.token",
        "dataset": "vitals",
        "model": "vitals-mlp",
        **fields,
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _decisions(site_state: Path) -> list[dict[str, object]]:
    path = site_state / "lab" / "runtime" / "decisions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_topology_has_a_partition_per_compute_pool_and_an_account_per_tenant(planned: PlannedSite) -> None:
    topology = slurm_topology(planned.plan)
    assert topology is not None
    assert topology["controller"] == {"name": "lab-control-001", "address": "10.200.0.2"}
    assert [n["name"] for n in topology["nodes"]] == ["lab-cpu-001", "lab-cpu-002"]
    assert topology["nodes"][0] | {"address": None} == {
        "name": "lab-cpu-001",
        "address": None,
        "cpus": 2,
        "real_memory_mib": 4096,
        "gpus": 0,
        "gpu_model": None,
        "partition": "cpu",
    }
    assert topology["partitions"] == [
        {"name": "cpu", "nodes": ["lab-cpu-001", "lab-cpu-002"], "default": True}
    ]
    assert topology["accounts"] == [
        {"name": "health", "partitions": ["cpu"]},
        {"name": "research", "partitions": ["cpu"]},
    ]


def test_placement_defaults_and_refusals(planned: PlannedSite, tmp_path: Path, site_state: Path) -> None:
    job = load_job(_job(planned, tmp_path, "health"))
    assert submit.place(planned, job, pool=None, nodes=None) == submit.Placement("cpu", 1, "NG")
    assert submit.place(planned, job, pool="cpu", nodes=2).nodes == 2
    with pytest.raises(UsageError, match="has 2 host"):
        submit.place(planned, job, pool=None, nodes=3)
    with pytest.raises(UsageError, match="not a compute pool"):
        submit.place(planned, job, pool="control", nodes=1)
    hosts_job = load_job(_job(planned, tmp_path, "health", hosts=["lab-cpu-001", "lab-cpu-002"]))
    named = ("lab-cpu-001", "lab-cpu-002")
    assert submit.place(planned, hosts_job, pool=None, nodes=None) == submit.Placement("cpu", 2, "NG", named)
    with pytest.raises(UsageError, match="names 2 hosts"):
        submit.place(planned, hosts_job, pool=None, nodes=1)
    stranger = load_job(_job(planned, tmp_path, "health", hosts=["lab-cpu-001", "--uid=0"]))
    with pytest.raises(UsageError, match="names --uid=0, not hosts of site lab"):
        submit.place(planned, stranger, pool=None, nodes=None)
    with pytest.raises(UsageError, match="names --uid=0, not hosts of pool cpu"):
        submit.place(planned, stranger, pool="cpu", nodes=None)


def test_a_job_that_names_its_host_is_submitted_pinned_to_it(
    planned: PlannedSite, tmp_path: Path, site_state: Path
) -> None:
    slurm = RecordingSlurm()
    submit.train(planned, _job(planned, tmp_path, "health", hosts=["lab-cpu-002"]), client=slurm)
    (_, _), (sbatch, _) = slurm.calls
    assert "--nodes=1" in sbatch and "--nodelist=lab-cpu-002" in sbatch
    unnamed = RecordingSlurm()
    submit.train(planned, _job(planned, tmp_path, "health"), client=unnamed)
    assert not [a for a in unnamed.calls[1][0] if a.startswith("--nodelist")]


def test_an_allowed_job_is_recorded_then_submitted_under_the_tenants_account(
    planned: PlannedSite, tmp_path: Path, site_state: Path
) -> None:
    slurm = RecordingSlurm()
    submission = submit.train(planned, _job(planned, tmp_path, "health"), client=slurm, nodes=2)
    assert (submission.tenant, submission.partition, submission.nodes, submission.slurm_job_id) == (
        "health",
        "cpu",
        2,
        "41",
    )
    (mkdir, _), (sbatch, script) = slurm.calls
    assert mkdir == ["mkdir", "-p", "/srv/share/models/vitals-mlp/runs/unit-job"]
    assert sbatch == [
        "sbatch",
        "--parsable",
        "--job-name=unit-job",
        "--account=health",
        "--partition=cpu",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--no-requeue",
        f"--comment=aifactory-decision={submission.decision_id}",
        "--output=/srv/share/models/vitals-mlp/runs/unit-job/slurm-%j.out",
    ]
    assert script is not None and script.startswith("#!/bin/sh\n")
    assert "-m aifactory.runtime.allocation" in script
    assert "exec srun --ntasks-per-node=1 --kill-on-bad-exit=1" in script
    assert '--host "$SLURMD_NODENAME"' in script and "/opt/aifactory/current/bin/aifactory-train" in script
    assert "token" not in script.split("<<'AIFACTORY_JOB'")[1].split("token_file")[0]  # no token inline
    recorded = _decisions(site_state)
    assert recorded[-1]["decision_id"] == submission.decision_id and recorded[-1]["allow"] is True
    assert recorded[-1]["component"] == "scheduler" and recorded[-1]["tenant"] == "health"
    listed = jobs.submitted_decisions("lab")
    assert listed == {"41": submission.decision_id}


def test_a_tenant_without_a_grant_is_refused_and_nothing_is_sent(
    planned: PlannedSite, tmp_path: Path, site_state: Path
) -> None:
    slurm = RecordingSlurm()
    with pytest.raises(RuntimeDenied) as caught:
        submit.train(planned, _job(planned, tmp_path, "research"), client=slurm)
    assert slurm.calls == []
    recorded = _decisions(site_state)[-1]
    assert recorded["allow"] is False and recorded["tenant"] == "research" and recorded["reasons"]
    assert recorded["decision_id"] in caught.value.message
    assert not (site_state / "lab" / "scheduler" / "submissions.jsonl").exists()


def test_a_forged_token_is_refused(planned: PlannedSite, tmp_path: Path, site_state: Path) -> None:
    path = _job(planned, tmp_path, "health")
    (tmp_path / "health.token").write_text("not-a-token")
    slurm = RecordingSlurm()
    with pytest.raises(RuntimeDenied, match="unverified"):
        submit.train(planned, path, client=slurm)
    assert slurm.calls == []


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="needs slurm-client")
def test_the_allocation_rewrite_puts_the_allocated_nodes_in_the_job(
    planned: PlannedSite, tmp_path: Path, site_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "slurm.conf"  # scontrol reads a configuration even to expand host lists
    conf.write_text("ClusterName=t\nSlurmctldHost=localhost\nNodeName=lab-cpu-[001-002] CPUs=1\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    hosts = allocation.allocated_hosts("lab-cpu-[001-002]")
    assert hosts == ["lab-cpu-001", "lab-cpu-002"]
    job = load_job(_job(planned, tmp_path, "health", storage_root="storage"))
    written = allocation.write_allocation_job(job, slurm_job_id="7", hosts=hosts)
    assert written == tmp_path / "storage/srv/share/models/vitals-mlp/runs/unit-job/slurm-7.job.yaml"
    again = load_job(written)
    assert again.hosts == hosts and again.plan == tmp_path / "plan.json"
    assert again.model_copy(update={"hosts": []}) == job


def test_the_allocation_entry_point_refuses_outside_an_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    with pytest.raises(UsageError, match="no Slurm allocation"):
        allocation.allocated_hosts()


def test_listing_parsers_read_squeue_and_the_completion_log() -> None:
    queued = jobs.parse_squeue("9|health|RUNNING|2|lab-cpu-[001-002]|aifactory-decision=abc|j|cpu|None\n")
    assert queued == [jobs.SlurmJob("9", "j", "health", "cpu", "RUNNING", 2, "lab-cpu-[001-002]", "abc")]
    line = (
        "JobId=2 UserId=root(0) GroupId=root(0) Name=sched-two JobState=COMPLETED Partition=cpu "
        "TimeLimit=UNLIMITED StartTime=2026-11-22T04:17:29 EndTime=2026-11-22T04:17:48 "
        "NodeList=sched-cpu-[001-002] NodeCnt=2 ProcCnt=2 WorkDir=/ ReservationName= "
        "Tres=cpu=2,mem=8G,node=2,billing=2 Account=health QOS= WcKey= Cluster=unknown "
        "SubmitTime=2026-11-22T04:17:29 EligibleTime=2026-11-22T04:17:29 DerivedExitCode=0:0 "
        "ExitCode=0:0 \n"
    )
    assert jobs.parse_jobcomp(line) == [
        jobs.SlurmJob(
            "2",
            "sched-two",
            "health",
            "cpu",
            "COMPLETED",
            2,
            "sched-cpu-[001-002]",
            None,
            exit_code="0:0",
            start="2026-11-22T04:17:29",
            end="2026-11-22T04:17:48",
        )
    ]
    (finished,) = jobs.parse_jobcomp(line)
    interval = finished.interval()
    assert interval is not None and interval[1] - interval[0] == 19.0
    assert jobs.SlurmJob("3", "q", "health", "cpu", "RUNNING", 1, "n", None).interval() is None


def test_the_cli_refuses_a_deny_with_exit_1_and_no_traceback(
    planned: PlannedSite, tmp_path: Path, site_state: Path
) -> None:
    path = _job(planned, tmp_path, "research")
    done = subprocess.run(
        [str(Path(sys.executable).with_name("aifactory")), "train", str(LAB), str(path)],
        capture_output=True,
        text=True,
        env={**os.environ},
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "error[train-denied]" in done.stderr and "Traceback" not in done.stderr


def test_gpu_hosts_carry_their_gpus_as_gres() -> None:
    gpu_site = REPO / "tests" / "deploy" / "fixtures" / "gpu-site.yaml"
    if not gpu_site.exists():
        pytest.skip("the deploy tests' GPU site is gone")
    topology = slurm_topology(plan_site(gpu_site, write_lock=False).plan)
    assert topology is not None
    gpu_nodes = [n for n in topology["nodes"] if n["gpus"]]
    assert gpu_nodes and all(n["gpus"] == 8 and n["gpu_model"] for n in gpu_nodes)
    assert slurm_topology(plan_site(gpu_site, write_lock=False).plan) == topology  # deterministic
