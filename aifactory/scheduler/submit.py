"""`aifactory train SITE JOB.yaml`: decide, record, then submit the job to Slurm.

1. Plan the site; read and validate the job (paths made absolute).
2. The runtime's policy decision for the job's tenant, made here on the control host BEFORE sbatch:
   the token is verified with the site's trust files (the tenant comes only from it), the policy
   decides `train` on `dataset/<name>` in the country of the partition's pool, and the tenant must
   be granted that pool. The decision is recorded durably in the runtime's decision log (AU-12)
   whatever it is; a deny raises `RuntimeDenied` and sbatch is never called (AC-3).
3. On allow: `sbatch --parsable` under `--account=<tenant>`, `--partition=<pool>`, `--nodes=N`
   (and `--nodelist=` the hosts the job names, each a planned host of that pool),
   `--comment=aifactory-decision=<id>`, with a batch script that writes the job for the allocation
   (`aifactory.runtime.allocation`) and runs `aifactory-train` once per node with `srun`.
4. The submission (Slurm job id <-> decision id, tenant, partition) is appended to the scheduler's
   hash-chained submissions log and the operator log.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aifactory.chain import ChainWriter
from aifactory.errors import RuntimeDenied, UsageError
from aifactory.plan import PlannedSite
from aifactory.runtime.allocation import job_document, run_folder
from aifactory.runtime.job import JobSpec, load_job
from aifactory.scheduler.slurm import SlurmClient, checked
from aifactory.scheduler.topology import COMPUTE_ROLES
from aifactory.state import SiteState
from aifactory.trust.authz import Guard, Outcome, load_authorizer
from aifactory.trust.decisionlog import DecisionLog
from aifactory.trust.tokens import TokenVerifier, TrustFiles

DEFAULT_RUNTIME_PREFIX = Path("/opt/aifactory/current")
DECISION_COMMENT = "aifactory-decision="
COMPONENT = "scheduler"


@dataclass(frozen=True)
class Placement:
    """Where the job asks to run: a compute pool (Slurm partition), a node count, and the hosts it
    names (its `hosts:`, which Slurm must include: `--nodelist`; none: Slurm chooses)."""

    partition: str
    nodes: int
    country: str | None
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Submission:
    job: str
    tenant: str
    account: str
    partition: str
    nodes: int
    decision_id: str
    slurm_job_id: str
    submitted_on: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def runtime_folder(site: str) -> Path:
    """The control host's runtime folder: trust files (`aifactory token issue`) and decision log."""
    return SiteState.for_site(site).subdir("runtime")


def submissions_log(site: str) -> Path:
    return SiteState.for_site(site).subdir("scheduler") / "submissions.jsonl"


def place(planned: PlannedSite, job: JobSpec, *, pool: str | None, nodes: int | None) -> Placement:
    """The pool the job asks for (`--pool`, else its `hosts:`' pool, else the only compute pool)."""
    plan = planned.plan
    compute = {p.name: p for p in plan.pools if p.role in COMPUTE_ROLES}
    if not compute:
        raise UsageError(f"site {plan.name} has no gpu or cpu pool to schedule on")
    if pool is None and job.hosts:
        unknown = sorted(set(job.hosts) - {h.name for h in plan.hosts})
        if unknown:
            raise UsageError(f"the job names {', '.join(unknown)}, not hosts of site {plan.name}")
        pools = {plan.host(name).pool for name in job.hosts}
        if len(pools) != 1:
            raise UsageError(
                f"the job's hosts are in several pools ({', '.join(sorted(pools))})", hint="pass --pool NAME"
            )
        pool = pools.pop()
    if pool is None:
        if len(compute) != 1:
            raise UsageError("the site has several compute pools", hint=f"pass --pool ({', '.join(compute)})")
        pool = next(iter(compute))
    if pool not in compute:
        raise UsageError(
            f"pool {pool!r} is not a compute pool of site {plan.name}",
            hint=f"compute pools: {', '.join(compute)}",
        )
    size = len(compute[pool].hosts)
    count = nodes if nodes is not None else (len(job.hosts) or 1)
    if not 1 <= count <= size:
        raise UsageError(
            f"pool {pool} has {size} host(s); the job asks for {count}",
            hint="pass --nodes N within the pool's size",
        )
    outside = sorted(set(job.hosts) - set(compute[pool].hosts))
    if outside:  # a name from the job file goes to sbatch only when the plan has it in this pool
        raise UsageError(
            f"the job names {', '.join(outside)}, not hosts of pool {pool}",
            hint=f"name hosts of pool {pool} (aifactory plan lists them), or pass --pool",
        )
    if count < len(job.hosts):
        raise UsageError(
            f"the job names {len(job.hosts)} hosts ({', '.join(job.hosts)}); --nodes {count} is fewer",
            hint="leave --nodes out (one node per named host) or name fewer hosts",
        )
    return Placement(pool, count, compute[pool].country, tuple(job.hosts))


def decide(planned: PlannedSite, job: JobSpec, placement: Placement) -> Outcome:
    """The runtime policy decision for the job's tenant, recorded before anything is submitted."""
    plan = planned.plan
    runtime_dir = runtime_folder(plan.name)
    decisions = DecisionLog(runtime_dir / "decisions.jsonl")
    try:
        guard = Guard(
            verifier=TokenVerifier(TrustFiles(runtime_dir), site=plan.name),
            authorizer=load_authorizer(plan),
            decisions=decisions,
            component=COMPONENT,
            host=plan.control_host,
            host_country=placement.country,
        )
        request: dict[str, Any] = {
            "job": job.name,
            "partition": placement.partition,
            "nodes": placement.nodes,
        }
        if placement.hosts:
            request["hosts"] = list(placement.hosts)
        outcome = guard.decide(job.token(), "train", f"dataset/{job.dataset}", request=request)
        if outcome.allow and placement.partition not in _tenant_pools(planned, outcome.tenant):
            outcome = Outcome(
                False,
                ("pool-not-granted",),
                outcome.decision_id,
                outcome.action,
                outcome.resource,
                outcome.tenant,
                outcome.token_id,
                outcome.controls,
                request,
            )
        try:
            guard.record(outcome).result(timeout=30)
        except Exception as exc:  # noqa: BLE001 -- an unrecorded decision may not allow anything
            raise RuntimeDenied(
                f"cannot record decision {outcome.decision_id}: {exc}",
                hint=f"check the decision log in {runtime_dir}",
                code="log-unavailable",
            ) from exc
        return outcome
    finally:
        decisions.close()


def _tenant_pools(planned: PlannedSite, tenant: str | None) -> list[str]:
    for entry in planned.plan.tenants:
        if entry.name == tenant:
            return list(entry.pools)
    return []


def batch_script(job: JobSpec, *, runtime_prefix: Path = DEFAULT_RUNTIME_PREFIX) -> str:
    """The batch script: write the job for the allocation, then one aifactory-train per node."""
    python = shlex.quote(str(runtime_prefix / "bin" / "python"))
    train = shlex.quote(str(runtime_prefix / "bin" / "aifactory-train"))
    document = job_document(job)
    marker = "AIFACTORY_JOB"
    if marker in document:
        raise UsageError("the job file contains the text AIFACTORY_JOB", hint="rename what carries it")
    return (
        "#!/bin/sh\n"
        f"# aifactory training job {job.name}: submitted by `aifactory train` (docs/scheduler.md).\n"
        "set -eu\n"
        f"job_file=$({python} -m aifactory.runtime.allocation --job-id \"$SLURM_JOB_ID\" <<'{marker}'\n"
        f"{document}{marker}\n"
        ")\n"
        'echo "aifactory: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST: $job_file" >&2\n'
        "exec srun --ntasks-per-node=1 --kill-on-bad-exit=1 \\\n"
        f'  sh -c \'exec "$1" "$2" --host "$SLURMD_NODENAME"\' aifactory-train {train} "$job_file"\n'
    )


def sbatch_argv(
    job: JobSpec, *, tenant: str, placement: Placement, decision_id: str, output: Path
) -> list[str]:
    return [
        "sbatch",
        "--parsable",
        f"--job-name={job.name}",
        f"--account={tenant}",
        f"--partition={placement.partition}",
        f"--nodes={placement.nodes}",
        *([f"--nodelist={','.join(placement.hosts)}"] if placement.hosts else []),
        "--ntasks-per-node=1",
        "--no-requeue",
        f"--comment={DECISION_COMMENT}{decision_id}",
        f"--output={output}",
    ]


def train(
    planned: PlannedSite,
    job_path: Path,
    *,
    client: SlurmClient,
    pool: str | None = None,
    nodes: int | None = None,
    runtime_prefix: Path = DEFAULT_RUNTIME_PREFIX,
) -> Submission:
    """Decide, record, submit. Raises RuntimeDenied (sbatch not called) on a deny."""
    job = load_job(job_path)
    placement = place(planned, job, pool=pool, nodes=nodes)
    outcome = decide(planned, job, placement)
    if not outcome.allow:
        raise RuntimeDenied(
            f"tenant {outcome.tenant or '(unverified)'} may not train on dataset/{job.dataset} in pool "
            f"{placement.partition}: {', '.join(outcome.reasons)} (decision {outcome.decision_id})",
            hint="nothing was submitted; ask the dataset's owner for a train grant, or check the token",
            code="train-denied",
        )
    return submit_batch(
        planned,
        job,
        outcome=outcome,
        placement=placement,
        client=client,
        script=batch_script(job, runtime_prefix=runtime_prefix),
    )


def submit_batch(
    planned: PlannedSite,
    job: JobSpec,
    *,
    outcome: Outcome,
    placement: Placement,
    client: SlurmClient,
    script: str,
) -> Submission:
    """sbatch `script` for an allowed, recorded decision; the submission, logged (step 3 and 4 above).
    The loop's evaluation job comes through here too (aifactory.loop.jobs)."""
    tenant = str(outcome.tenant)
    output = run_folder(job, planned.plan) / "slurm-%j.out"
    checked(client.run(["mkdir", "-p", str(output.parent)]), "creating the run folder", client.where)
    argv = sbatch_argv(
        job, tenant=tenant, placement=placement, decision_id=outcome.decision_id, output=output
    )
    stdout = checked(client.run(argv, input_text=script), "sbatch", client.where)
    slurm_job_id = stdout.strip().split(";")[0]
    submission = Submission(
        job.name,
        tenant,
        tenant,
        placement.partition,
        placement.nodes,
        outcome.decision_id,
        slurm_job_id,
        client.where,
    )
    _record(planned.plan.name, submission)
    return submission


def _record(site: str, submission: Submission) -> None:
    ChainWriter(submissions_log(site)).append(submission.as_dict())
    SiteState.for_site(site).record(command="train", result="submitted", detail=submission.as_dict())
