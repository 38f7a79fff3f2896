"""What torchrun runs on every process: DistributedDataParallel training with resume.

Started only by `aifactory-train` after the policy allowed the job (it refuses to run without the
decision id the launcher passes). Rank 0 loads the newest complete checkpoint and shares it (the
weights through DDP's initial broadcast, the optimizer state and step by broadcast), so storage need
not be shared for resume. Batches are a pure function of (seed, step), so a resumed run sees exactly
the batches an uninterrupted one would.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as functional
from torch.nn.parallel import DistributedDataParallel

from aifactory.console import DEBUG_HELP, UsageParser, run_console
from aifactory.durable import atomic_write
from aifactory.errors import AifactoryError, RuntimeDenied
from aifactory.runtime import checkpoint
from aifactory.runtime import dataset as datasets
from aifactory.runtime.job import DATA_READ, DATA_READ_FORMAT, load_job
from aifactory.runtime.metrics import TrainingMetrics
from aifactory.runtime.model import ModelConfig, build
from aifactory.runtime.siteplan import RuntimePlan
from aifactory.runtime.train_cli import DECISION_ENV, _die_with_parent

FAULT_STALL_AT_STEP = "AIFACTORY_FAULT_STALL_AT_STEP"  # test-only fault injection: rank 0 hangs there


class BatchOrder:
    """Global batch `step` = samples [step*B, step*B + B) of an endless sequence of seeded permutations."""

    def __init__(self, samples: int, batch: int, seed: int) -> None:
        self.samples, self.batch, self.seed = samples, batch, seed
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            self._permutations = {
                epoch: np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(self.samples)
            }
        return self._permutations[epoch]

    def indices(self, step: int) -> np.ndarray:
        positions = np.arange(step * self.batch, (step + 1) * self.batch)
        return np.array([self._permutation(int(p // self.samples))[p % self.samples] for p in positions])


def _resume_state(directory: Any, rank: int) -> tuple[int, dict[str, Any] | None, dict[str, Any] | None]:
    payload: list[Any] = [None]
    if rank == 0:
        found = checkpoint.latest_complete(directory)
        if found is not None:
            payload = [(found.step, found.model_state, found.optimizer_state)]
    dist.broadcast_object_list(payload, src=0)
    if payload[0] is None:
        return 0, None, None
    step, model_state, optimizer_state = payload[0]
    return int(step), model_state, optimizer_state


def restore(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, Any] | None,
    optimizer_state: dict[str, Any] | None,
) -> None:
    """The checkpoint's weights into the model, and its optimizer state where it has one: a checkpoint
    signed in from elsewhere (weights only, an empty optimizer state) is trained on from those weights
    with a fresh optimizer, instead of failing on the optimizer's missing fields."""
    if model_state is None:
        return
    model.load_state_dict(model_state)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)


def train(job_path: str, host: str | None) -> None:
    job = load_job(job_path)
    plan = RuntimePlan.load(job.plan, storage_root=job.storage_root)
    settings = job.train
    torch.set_num_threads(settings.threads)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    # Explicit, from the job: a collective waiting on a hung peer fails after this (Gloo and NCCL).
    dist.init_process_group(backend, timeout=timedelta(seconds=job.timeouts.collective_s))
    rank, world = dist.get_rank(), dist.get_world_size()
    if settings.global_batch % world:
        raise AifactoryError(
            f"global_batch {settings.global_batch} is not a multiple of {world} processes", code="invalid-job"
        )
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if backend == "nccl"
        else torch.device("cpu")
    )
    data = datasets.load(plan.dataset_dir(job.dataset))
    config = ModelConfig(
        features=data.features, classes=data.classes, hidden=job.network.hidden, layers=job.network.layers
    )
    model = build(config, seed=settings.seed).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    checkpoints = plan.model_dir(job.model) / "checkpoints"
    start, model_state, optimizer_state = _resume_state(checkpoints, rank)
    restore(model, optimizer, model_state, optimizer_state)
    ddp = DistributedDataParallel(model)
    metrics = (
        TrainingMetrics(
            checkpoints.parent / "runs" / job.name / "metrics.jsonl",
            checkpoints.parent / "runs" / job.name / "metrics.prom",
            job=job.name,
        )
        if rank == 0
        else None
    )
    if metrics:  # rank 0: the files this job learns from, for the loop's training manifest
        write_data_read(checkpoints.parent / "runs" / job.name, job=job.name, dataset=job.dataset, data=data)
    if metrics and start:
        print(f"aifactory-train: resumed from step {start}", file=sys.stderr, flush=True)
    order = BatchOrder(len(data), settings.global_batch, settings.seed)
    meta = {
        "model": job.model,
        "dataset": job.dataset,
        "job": job.name,
        "seed": settings.seed,
        "network": config.as_dict(),
        "world_size": world,
        "decision_id": os.environ.get(DECISION_ENV),
    }
    for step in range(start, settings.steps):
        began = time.perf_counter()
        local = order.indices(step)[rank::world]
        inputs = torch.from_numpy(data.x[local]).to(device)
        labels = torch.from_numpy(data.y[local]).to(device)
        loss = functional.cross_entropy(ddp(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)  # Tensor.backward's own signature carries no types
        optimizer.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        done = step + 1
        if metrics:
            elapsed = time.perf_counter() - began
            metrics.step(
                {
                    "step": done,
                    "loss": round(float(mean_loss) / world, 6),
                    "world_size": world,
                    "samples_per_s": round(settings.global_batch / elapsed, 1),
                    "resumed_from": start,
                    "time": round(time.time(), 3),
                }
            )
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            if rank == 0:
                checkpoint.save(
                    checkpoints,
                    step=done,
                    model_state=model.state_dict(),
                    optimizer_state=optimizer.state_dict(),
                    meta=meta,
                    keep=settings.keep_checkpoints,
                )
            dist.barrier()
        if rank == 0 and os.environ.get(FAULT_STALL_AT_STEP) == str(done):
            time.sleep(3600)
    if metrics:
        metrics.close()
    # DDP's reducer holds the process group and DDP sits in reference cycles: drop it here so the
    # group and Gloo's threads go while the interpreter is whole, not at its shutdown.
    del ddp
    _release_process_group()


def write_data_read(run_folder: Path, *, job: str, dataset: str, data: datasets.Dataset) -> None:
    """`data-read.json`: each file the job read (path below the dataset's folder, SHA-256 checked as
    it was read, size). The control host checks it against a signed dataset version and signs the
    training manifest from it (aifactory.loop.manifest); the job itself holds no key."""
    document = {
        "format": DATA_READ_FORMAT,
        "job": job,
        "dataset": dataset,
        "files": [{"path": p, "sha256": s, "size": n} for p, s, n in data.files_read],
    }
    run_folder.mkdir(parents=True, exist_ok=True)
    atomic_write(run_folder / DATA_READ, (json.dumps(document, sort_keys=True, indent=1) + "\n").encode())


def _release_process_group() -> None:
    """Destroy the process group once every rank is done with it.

    Left to interpreter shutdown, tearing down Gloo's threads can abort the process ("terminate
    called without an active exception"): the likely cause of such an abort a CI machine once saw at
    the end of a job.
    """
    dist.barrier()  # no rank closes its connections while a peer still reads the last collective
    gc.collect()
    dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    # Logging stays as torchrun leaves it: the worker's own output is its metrics and checkpoints.
    return run_console(_work, argv, log_format=None)


def _work(arguments: list[str]) -> int:
    _die_with_parent()
    parser = UsageParser(prog="aifactory.runtime.train_worker")
    parser.add_argument("job")
    parser.add_argument("--host", default="")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(arguments)
    if not os.environ.get(DECISION_ENV):
        raise RuntimeDenied(
            "start training jobs with aifactory-train, which checks the policy first",
            code="train-not-authorized",
        )
    train(args.job, args.host or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
