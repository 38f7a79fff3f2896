"""A stand-in for Slurm (the one fake of the loop tests): the turn's training and evaluation jobs run
here, one after the other, as the same programs Slurm would start on a node (`aifactory-train`'s
launcher with torchrun, and aifactory.runtime.evaluate). Training, evaluation, policy decisions and
signatures are all real; only sbatch/srun and the job's queue are not."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aifactory.loop.jobs import EvaluationRequest, SubmittedJob
from aifactory.runtime.job import load_job

DECISION = re.compile(r"decision ([0-9a-z-]+) allows")


@dataclass
class LocalJobs:
    host: str = "looplab-cpu-001"
    submitted: list[str] = field(default_factory=list)  # job names, in order
    states: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    fail_next: set[str] = field(default_factory=set)  # "training", "evaluation": ends FAILED once, unrun

    def _run(self, name: str, argv: list[str], kind: str) -> str:
        if kind in self.fail_next:  # as a job Slurm ends FAILED (a node lost, say)
            self.fail_next.discard(kind)
            argv = [sys.executable, "-c", "raise SystemExit(1)"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        env.pop("AIFACTORY_TOKEN", None)
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
        job_id = f"local-{len(self.submitted) + 1}"
        self.submitted.append(name)
        self.states[job_id] = "COMPLETED" if done.returncode == 0 else "FAILED"
        self.outputs[job_id] = done.stdout + done.stderr
        return job_id

    def submit_training(self, job_path: Path) -> SubmittedJob:
        name = load_job(job_path).name
        argv = [sys.executable, "-m", "aifactory.runtime.train_cli", str(job_path), "--host", self.host]
        job_id = self._run(name, argv, "training")
        found = DECISION.search(self.outputs[job_id])
        return SubmittedJob(name, job_id, found.group(1) if found else "none")

    def submit_evaluation(self, request: EvaluationRequest) -> SubmittedJob:
        job_id = self._run(request.name, request.argv(sys.executable), "evaluation")
        return SubmittedJob(request.name, job_id, "none")

    def wait(self, job: SubmittedJob) -> str:
        return self.states[job.slurm_job_id]
