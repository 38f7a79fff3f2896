"""Where a loop turn's jobs run: the seam between the turn (aifactory.loop.turn) and the cluster.

    LoopJobs (Protocol)   submit a training job, submit an evaluation job, wait for one to end
    SlurmJobs             the real one: `aifactory train`'s library path (policy decision recorded,
                          then sbatch) for training; the same decision, record and sbatch for the
                          evaluation job (aifactory.runtime.evaluate under srun); sacct/squeue for
                          the end (aifactory.scheduler.jobs)

The tests put a stand-in for Slurm here that runs the same programs on this machine
(tests/loop/local_jobs.py): real training, real evaluation, no scheduler.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aifactory.errors import LoopError, RuntimeDenied
from aifactory.plan import PlannedSite
from aifactory.runtime.job import load_job
from aifactory.scheduler.jobs import list_jobs
from aifactory.scheduler.slurm import SlurmClient
from aifactory.scheduler.submit import DEFAULT_RUNTIME_PREFIX, decide, place, submit_batch, train

RUNNING_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED")
JOB_TIMEOUT_S = 900.0
POLL_S = 2.0


@dataclass(frozen=True)
class SubmittedJob:
    name: str
    slurm_job_id: str
    decision_id: str


@dataclass(frozen=True)
class EvaluationRequest:
    """What the evaluation job measures; paths as the node that runs it sees them."""

    job_template: Path  # the turn's training job file: its token, plan and placement are reused
    name: str
    model: str
    model_dir: Path
    champion: str | None
    challenger: str
    dataset: str
    dataset_dir: Path
    version: int
    trust: Path  # the site's model-signing public key on the node
    out: Path

    def argv(self, python: str) -> list[str]:
        return [
            python,
            "-m",
            "aifactory.runtime.evaluate",
            "--model",
            self.model,
            "--model-dir",
            str(self.model_dir),
            *(["--champion", self.champion] if self.champion else []),
            "--challenger",
            self.challenger,
            "--dataset",
            self.dataset,
            "--dataset-dir",
            str(self.dataset_dir),
            "--version",
            str(self.version),
            "--trust",
            str(self.trust),
            "--out",
            str(self.out),
        ]


class LoopJobs(Protocol):
    def submit_training(self, job_path: Path) -> SubmittedJob: ...

    def submit_evaluation(self, request: EvaluationRequest) -> SubmittedJob: ...

    def wait(self, job: SubmittedJob) -> str:
        """The job's final state (`COMPLETED` when it succeeded)."""
        ...


@dataclass(frozen=True)
class SlurmJobs:
    """The turn's jobs through the site's Slurm."""

    planned: PlannedSite
    client: SlurmClient
    runtime_prefix: Path = DEFAULT_RUNTIME_PREFIX
    timeout_s: float = JOB_TIMEOUT_S

    def submit_training(self, job_path: Path) -> SubmittedJob:
        job = load_job(job_path)
        nodes = len(job.hosts) or 1
        submission = train(
            self.planned, job_path, client=self.client, nodes=nodes, runtime_prefix=self.runtime_prefix
        )
        return SubmittedJob(submission.job, submission.slurm_job_id, submission.decision_id)

    def submit_evaluation(self, request: EvaluationRequest) -> SubmittedJob:
        """The policy decides (and the log records) that the tenant of the turn's token may read the
        evaluation set, as for training; then one task under srun on one node of the pool."""
        template = load_job(request.job_template)
        job = template.model_copy(update={"name": request.name, "dataset": request.dataset, "hosts": []})
        trained_on = place(self.planned, template, pool=None, nodes=len(template.hosts) or 1).partition
        placement = place(self.planned, job, pool=trained_on, nodes=1)  # the training job's pool, any node
        outcome = decide(self.planned, job, placement)
        if not outcome.allow:
            raise RuntimeDenied(
                f"tenant {outcome.tenant or '(unverified)'} may not read dataset/{request.dataset} for the "
                f"evaluation: {', '.join(outcome.reasons)} (decision {outcome.decision_id})",
                code="evaluation-denied",
            )
        python = str(self.runtime_prefix / "bin" / "python")
        script = (
            "#!/bin/sh\n"
            f"# aifactory loop evaluation {request.name}: submitted by `aifactory loop run` (docs/loop.md).\n"
            "set -eu\n"
            f"exec srun --ntasks=1 {shlex.join(request.argv(python))}\n"
        )
        submission = submit_batch(
            self.planned, job, outcome=outcome, placement=placement, client=self.client, script=script
        )
        return SubmittedJob(submission.job, submission.slurm_job_id, submission.decision_id)

    def wait(self, job: SubmittedJob) -> str:
        deadline = time.monotonic() + self.timeout_s
        site = self.planned.plan.name
        while time.monotonic() < deadline:
            found = {j.id: j for j in list_jobs(site, client=self.client)}.get(job.slurm_job_id)
            state = found.state if found else "PENDING"
            if state not in RUNNING_STATES:
                return state
            time.sleep(POLL_S)
        raise LoopError(
            f"Slurm job {job.slurm_job_id} ({job.name}) did not end within {self.timeout_s:.0f} s",
            code="job-timeout",
            hint="run `aifactory loop run` again: the turn waits for the same job",
        )
