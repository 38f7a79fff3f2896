"""`aifactory train SITE JOB.yaml` (decide, record, submit to Slurm) and `aifactory jobs SITE`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aifactory.cli.output import emit_json, table
from aifactory.errors import Location, UsageError

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
    jobs.add_argument(
        "--energy",
        action="store_true",
        help="each finished job's joules and cost from its nodes' energy (needs the site spec and "
        "monitoring; docs/economics.md)",
    )
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
    client = client_for(site_connection(site))
    jobs = list_jobs(site, client=client)
    energy = _jobs_energy(args.site, jobs, client) if args.energy else {}
    if args.format == "json":
        emit_json(
            [{**job.as_dict(), **({"energy": energy.get(job.id)} if args.energy else {})} for job in jobs]
        )
        return 0
    header = ["ID", "NAME", "TENANT", "PARTITION", "STATE", "NODES", "NODELIST", "DECISION"]
    rows = [
        [j.id, j.name, j.account, j.partition, j.state, j.nodes, j.nodelist, j.decision_id or "-"]
        + ([_energy_cells(energy.get(j.id))] if args.energy else [])
        for j in jobs
    ]
    print(table(header + (["JOULES / COST (SOURCE)"] if args.energy else []), rows))
    return 0


def _jobs_energy(spec: str, jobs: list[Any], client: Any) -> dict[str, dict[str, Any]]:
    """Each finished job's economics (aifactory.telemetry.economics.job_economics) by job id."""
    from aifactory.plan import plan_site
    from aifactory.scheduler.jobs import job_hosts
    from aifactory.state import SiteState
    from aifactory.telemetry.economics import job_economics
    from aifactory.telemetry.status import PrometheusClient

    if not Path(spec).is_file():
        raise UsageError(
            f"--energy needs the site spec, not a site name: {spec!r}", location=Location(path="--energy")
        )
    plan = plan_site(spec, write_lock=False).plan
    prometheus = PrometheusClient.for_site(plan, SiteState.for_site(plan.name))
    found = {}
    for job in jobs:
        interval = job.interval()
        if interval is not None and job.nodelist:
            nodes = job_hosts(client, job.nodelist)
            found[job.id] = job_economics(
                prometheus, plan, job=job.id, nodes=nodes, start=interval[0], end=interval[1]
            ).as_dict()
    return found


def _energy_cells(energy: dict[str, Any] | None) -> str:
    if energy is None:
        return "-"
    cost = "-" if energy["cost"] is None else f"{energy['cost']:.6g} {energy['currency']}"
    return f"{energy['joules']:.6g} J / {cost} ({', '.join(energy['sources']) or 'no energy series'})"
