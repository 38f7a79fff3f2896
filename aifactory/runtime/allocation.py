"""Inside a Slurm allocation: the job file with `hosts:` = the nodes Slurm allocated, in order.

The batch script of `aifactory train` runs this on the allocation's first node; every node then runs
the unchanged `aifactory-train JOB --host NODE`, which rendezvouses on the first host's compute
address. The rewritten job is written beside the run's metrics on the model's storage (shared by
every node that trains it), as `<model>/runs/<job>/slurm-<job id>.job.yaml`.

    python -m aifactory.runtime.allocation --job-id "$SLURM_JOB_ID" < submitted-job.yaml
    (prints the path of the job file for the allocation)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from aifactory.console import DEBUG_HELP, UsageParser, run_console
from aifactory.errors import UsageError
from aifactory.plan.model import SitePlan
from aifactory.runtime.job import JobSpec, job_problems
from aifactory.runtime.siteplan import RuntimePlan


def allocated_hosts(nodelist: str | None = None) -> list[str]:
    """The allocation's node names in Slurm's order (`scontrol show hostnames`)."""
    nodelist = nodelist if nodelist is not None else os.environ.get("SLURM_JOB_NODELIST", "")
    if not nodelist:
        raise UsageError(
            "no Slurm allocation here (SLURM_JOB_NODELIST is empty)",
            hint="this runs inside the batch script `aifactory train` submits",
        )
    result = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False
    )
    hosts = result.stdout.split()
    if result.returncode != 0 or not hosts:
        raise UsageError(f"scontrol cannot expand the node list {nodelist!r}: {result.stderr.strip()}")
    return hosts


def job_for_allocation(job: JobSpec, hosts: Sequence[str]) -> JobSpec:
    """The same job on exactly these hosts (one node per host, rendezvous on the first)."""
    if not hosts:
        raise UsageError("an allocation has at least one host")
    return job.model_copy(update={"hosts": list(hosts)})


def job_document(job: JobSpec) -> str:
    """The job as YAML (aifactory.job/v1), every path absolute as the job carries them."""
    data = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False)


def run_folder(job: JobSpec, plan: SitePlan | None = None) -> Path:
    """Where the runtime keeps this job's run (metrics, checkpoints) on the model's storage
    (from `plan`, else the job's plan file)."""
    runtime_plan = (
        RuntimePlan(plan, storage_root=job.storage_root or Path("/"))
        if plan is not None
        else RuntimePlan.load(job.plan, storage_root=job.storage_root)
    )
    return runtime_plan.model_dir(job.model) / "runs" / job.name


def write_allocation_job(job: JobSpec, *, slurm_job_id: str, hosts: Sequence[str]) -> Path:
    folder = run_folder(job)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"slurm-{slurm_job_id}.job.yaml"
    target.write_text(job_document(job_for_allocation(job, hosts)))
    return target


def main(argv: Sequence[str] | None = None) -> int:
    return run_console(_allocate, argv, log_format=None)


def _allocate(arguments: list[str]) -> int:
    parser = UsageParser(
        prog="python -m aifactory.runtime.allocation",
        description="Write the job file for this Slurm allocation (reads the submitted job on stdin).",
    )
    parser.add_argument("--job-id", default=os.environ.get("SLURM_JOB_ID"), help="Slurm's job id")
    parser.add_argument("--nodelist", help="default: $SLURM_JOB_NODELIST")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(arguments)
    if not args.job_id:
        raise UsageError("no Slurm job id", hint="pass --job-id, or run inside an allocation")
    try:
        job = JobSpec.model_validate(yaml.safe_load(sys.stdin.read()))
    except ValidationError as exc:
        raise UsageError(
            "the submitted job is not a valid aifactory.job/v1", problems=job_problems(exc, "<stdin>")
        ) from None
    except yaml.YAMLError as exc:
        raise UsageError(f"the submitted job is not a valid aifactory.job/v1: {exc}") from None
    print(write_allocation_job(job, slurm_job_id=args.job_id, hosts=allocated_hosts(args.nodelist)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
