"""The training job file (JOB.yaml) that `aifactory-train` runs. No torch here.

schema: aifactory.job/v1
name: vitals-train              # names the run: rendezvous id, metrics, run folder
plan: plan.json                 # the site plan (relative paths are relative to this file)
token_file: health.token        # the tenant's token; or the AIFACTORY_TOKEN environment variable
dataset: vitals                 # a dataset of the site: read only from its planned path
model: vitals-mlp               # a model of the site: checkpoints go under its planned path
hosts: [lab-cpu-001, lab-cpu-002]   # optional: one node per host, rendezvous on the first
                                #   host's compute address; absent: this machine only (127.0.0.1)
processes_per_host: 1           # or "gpus": one per GPU the plan gives the host
rendezvous_port: 29400
max_restarts: 0                 # torchrun restarts a failed group this often (each resumes)
storage_root: /                 # optional prefix in front of planned storage paths
runtime_dir: ...                # optional: trust files and decision log (default: the site's
                                #   state folder, runtime/)
network: {hidden: 64, layers: 2}
train: {steps: 200, global_batch: 64, learning_rate: 0.003, seed: 1234,
        checkpoint_every: 20, keep_checkpoints: 3, threads: 1}
timeouts: {rendezvous_s: 600, collective_s: 1800}   # how long a node waits for the job's other
                                #   nodes to join (and for the first host's rendezvous store to
                                #   answer); how long one collective (Gloo/NCCL) may take
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aifactory.errors import Location, Problem, UsageError
from aifactory.state import SiteState

NAME = r"^[a-z][a-z0-9-]{0,62}$"
# What a training job leaves in its run folder: the files it read (aifactory.runtime.train_worker),
# for the loop's training manifest (aifactory.loop.manifest).
DATA_READ = "data-read.json"
DATA_READ_FORMAT = "aifactory.data-read/v1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Network(_Strict):
    hidden: int = Field(64, ge=1, le=65536)
    layers: int = Field(2, ge=1, le=64)


class TrainSettings(_Strict):
    steps: int = Field(200, ge=1)
    global_batch: int = Field(64, ge=1)
    learning_rate: float = Field(0.003, gt=0)
    seed: int = 1234
    checkpoint_every: int = Field(20, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    threads: int = Field(1, ge=1, le=256)


class Timeouts(_Strict):
    """Every host waits as long as the others: a node that starts first waits up to `rendezvous_s`
    for the rest and for the first host's store (torch's own default for the store is 60 s, shorter
    than its 300 s wait for members, so a late first host failed the others). A collective that
    takes longer than `collective_s` fails the job (a hung peer), which a restart then resumes."""

    rendezvous_s: int = Field(600, ge=1, le=86400)
    collective_s: int = Field(1800, ge=1, le=86400)


class JobSpec(_Strict):
    schema_: Literal["aifactory.job/v1"] = Field(alias="schema")
    name: str = Field(pattern=NAME)
    plan: Path
    token_file: Path | None = None
    dataset: str
    model: str
    hosts: list[str] = Field(default_factory=list)
    processes_per_host: int | Literal["gpus"] = 1
    rendezvous_port: int = Field(29400, ge=1, le=65535)
    max_restarts: int = Field(0, ge=0, le=100)
    storage_root: Path | None = None
    runtime_dir: Path | None = None
    network: Network = Network()
    train: TrainSettings = TrainSettings()
    timeouts: Timeouts = Timeouts()

    def token(self) -> str:
        from_env = os.environ.get("AIFACTORY_TOKEN")
        if from_env:
            return from_env.strip()
        if self.token_file is None:
            raise UsageError("the job carries no token", hint="set token_file in the job, or AIFACTORY_TOKEN")
        try:
            return self.token_file.read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the token file {self.token_file}: {exc.strerror}") from None

    def runtime_folder(self, site: str) -> Path:
        return self.runtime_dir or SiteState.for_site(site).subdir("runtime")


def job_problems(error: ValidationError, file: str) -> list[Problem]:
    """One problem per field the model refused, each naming its field path."""
    return [
        Problem("invalid-job", e["msg"], Location(file=file, path=".".join(str(p) for p in e["loc"])))
        for e in error.errors()
    ]


def load_job(path: Path | str) -> JobSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(
            f"cannot read the job file {path}: {exc.strerror}", location=Location(file=str(path))
        ) from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {exc}", location=Location(file=str(path))) from None
    try:
        job = JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(
            f"{path} is not a valid job (aifactory.job/v1)",
            location=Location(file=str(path)),
            problems=job_problems(exc, str(path)),
        ) from None
    base = path.resolve().parent
    updates = {
        key: base / value
        for key in ("plan", "token_file", "storage_root", "runtime_dir")
        if (value := getattr(job, key)) is not None and not Path(value).is_absolute()
    }
    return job.model_copy(update=updates)
