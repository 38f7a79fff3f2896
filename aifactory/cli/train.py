"""`aifactory train SITE JOB.yaml` (decide, record, submit to Slurm) and `aifactory jobs SITE`."""

from __future__ import annotations

import argparse
from pathlib import Path

from aifactory.cli.output import emit_json, table

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "train": "aifactory train lab/site.yaml job.yaml",
    "jobs": "aifactory jobs lab --format json",
}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    train = subparsers.add_parser(
        "train",
        parents=[common],
        help="submit a training job through Slurm, after the runtime policy allows the tenant",
        description="Plan the site, decide whether the job's tenant (from its token) may train on the "
        "job's dataset, record the decision, and on allow submit the job with sbatch (docs/scheduler.md). "
        "A deny exits 1 and submits nothing.",
    )
    train.add_argument("site", help="site spec (YAML)")
    train.add_argument("job", type=Path, help="job file (aifactory.job/v1)")
    train.add_argument(
        "--pool",
        help="compute pool (Slurm partition); default: the pool of the job's hosts, "
        "or the site's only compute pool",
    )
    train.add_argument("--nodes", type=int, help="nodes to allocate (default: the job's hosts, else 1)")
    train.add_argument(
        "--runtime-prefix",
        type=Path,
        default=Path("/opt/aifactory/current"),
        help="the runtime's install folder on the nodes (default /opt/aifactory/current)",
    )
    train.set_defaults(handler=cmd_train)

    jobs = subparsers.add_parser("jobs", parents=[common], help="list the site's Slurm jobs")
    jobs.add_argument("site", help="site spec (YAML) or site name")
    jobs.set_defaults(handler=cmd_jobs)


def cmd_train(args: argparse.Namespace) -> int:
    from aifactory.pipeline.connection import site_connection
    from aifactory.plan import plan_site
    from aifactory.scheduler.slurm import client_for
    from aifactory.scheduler.submit import train

    planned = plan_site(args.site, write_lock=False)
    submission = train(
        planned,
        args.job,
        client=client_for(site_connection(planned.plan.name)),
        pool=args.pool,
        nodes=args.nodes,
        runtime_prefix=args.runtime_prefix,
    )
    if args.format == "json":
        emit_json(submission.as_dict())
    else:
        print(
            f"submitted job {submission.slurm_job_id} ({submission.job}) for tenant {submission.tenant} "
            f"to partition {submission.partition} on {submission.nodes} node(s); "
            f"decision {submission.decision_id}"
        )
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from aifactory.cli.lab import site_name
    from aifactory.pipeline.connection import site_connection
    from aifactory.scheduler.jobs import list_jobs
    from aifactory.scheduler.slurm import client_for

    site = site_name(args.site)
    jobs = list_jobs(site, client=client_for(site_connection(site)))
    if args.format == "json":
        emit_json([job.as_dict() for job in jobs])
        return 0
    rows = [
        [j.id, j.name, j.account, j.partition, j.state, j.nodes, j.nodelist, j.decision_id or "-"]
        for j in jobs
    ]
    print(table(["ID", "NAME", "TENANT", "PARTITION", "STATE", "NODES", "NODELIST", "DECISION"], rows))
    return 0
