"""`aifactory-train JOB.yaml`: decide, then hand the job to torchrun.

On each host of the job:
  1. read the job and the site plan; find this host in the plan (`--host`, else the hostname);
  2. ask the runtime policy whether the token's tenant may `train` on `dataset/<name>` here (the
     host's country is the locality); record the decision durably; a deny stops the job with the
     reason codes and the decision id (exit 1) before any data is opened;
  3. run `python -m torch.distributed.run` (torch elastic, c10d rendezvous on the first host's
     compute address, or 127.0.0.1 for a single machine) with `aifactory.runtime.train_worker`.
The launcher imports no torch; the workers do.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aifactory.console import DEBUG_HELP, UsageParser, run_console
from aifactory.errors import AifactoryError, ExitCode, RuntimeDenied, UsageError
from aifactory.plan.model import Host
from aifactory.runtime import dataset as datasets
from aifactory.runtime.job import JobSpec, load_job
from aifactory.runtime.siteplan import RuntimePlan
from aifactory.trust.authz import Authorizer, Guard, Outcome, load_authorizer
from aifactory.trust.decisionlog import DecisionLog
from aifactory.trust.tokens import TokenVerifier, TrustFiles

log = logging.getLogger(__name__)
DECISION_ENV = "AIFACTORY_DECISION_ID"


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    node_rank: int
    nodes: int


def _die_with_parent() -> None:
    """Children get SIGKILL when their parent dies (kill -9 of the job leaves no orphan workers)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def authorize_job(
    job: JobSpec, plan: RuntimePlan, *, host: Host | None, authorizer: Authorizer | None = None
) -> Outcome:
    """The policy check that precedes any read of the dataset; records the decision durably."""
    runtime_dir = job.runtime_folder(plan.site)
    decisions = DecisionLog(runtime_dir / "decisions.jsonl")
    try:
        guard = Guard(
            verifier=TokenVerifier(TrustFiles(runtime_dir), site=plan.site),
            authorizer=authorizer or load_authorizer(plan.plan),
            decisions=decisions,
            component="train",
            host=host.name if host else None,
            host_country=host.country if host else None,
        )
        return guard.check(job.token(), "train", f"dataset/{job.dataset}", request={"job": job.name})
    finally:
        decisions.close()


def plan_launch(
    job: JobSpec, plan: RuntimePlan, *, job_path: Path, host: Host | None, decision_id: str
) -> Launch:
    if job.hosts:
        if host is None or host.name not in job.hosts:
            raise UsageError(
                f"this machine is not one of the job's hosts ({', '.join(job.hosts)})",
                hint="pass --host NAME with the plan's name for this host",
            )
        first = plan.host(job.hosts[0])
        endpoint, local = first.compute_address, host.compute_address
        if not endpoint or not local:
            raise UsageError(
                "the job's hosts need compute addresses in the plan",
                hint="put the hosts' pool on a compute fabric",
            )
        node_rank, nodes = job.hosts.index(host.name), len(job.hosts)
        network_env = dict(host.nccl)
    else:
        endpoint, local, node_rank, nodes, network_env = "127.0.0.1", "127.0.0.1", 0, 1, {}
    per_host = job.processes_per_host
    if per_host == "gpus":
        per_host = host.gpus.count if host and host.gpus else 1
    host_name = host.name if host else ""
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nodes}",
        f"--nproc-per-node={per_host}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={_endpoint(endpoint, job.rendezvous_port)}",
        f"--rdzv-id={job.name}",
        f"--rdzv-conf=is_host={str(node_rank == 0).lower()},{_rendezvous_waits(job)}",
        f"--local-addr={local}",
        f"--max-restarts={job.max_restarts}",
        "--monitor-interval=0.5",
        "-m",
        "aifactory.runtime.train_worker",
        str(job_path),
        "--host",
        host_name,
    ]
    env = {**os.environ, **network_env, DECISION_ENV: decision_id, "OMP_NUM_THREADS": str(job.train.threads)}
    return Launch(argv, env, node_rank, nodes)


def _rendezvous_waits(job: JobSpec) -> str:
    """torchrun's c10d waits, all from the job: for the other nodes to join (join_timeout) and for
    the first host's store to answer (read_timeout, which is also how long a node that starts before
    the first host keeps trying to connect)."""
    seconds = job.timeouts.rendezvous_s
    return f"join_timeout={seconds},read_timeout={seconds}"


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def run(argv: Sequence[str] | None = None) -> int:
    """The command itself (errors propagate: `main` is the edge)."""
    args = _parser().parse_args(argv)
    job = load_job(args.job)
    plan = RuntimePlan.load(job.plan, storage_root=job.storage_root)
    host = plan.this_host(args.host)
    if args.generate_dataset:
        return _generate(job, plan, samples=args.samples, offset=args.offset, extend=args.extend)
    outcome = authorize_job(job, plan, host=host)
    if not outcome.allow:
        raise RuntimeDenied(
            f"tenant {outcome.tenant or '(unverified)'} may not train on dataset/{job.dataset} here: "
            f"{', '.join(outcome.reasons)} (decision {outcome.decision_id})",
            hint="ask the dataset's owner for a train grant, or check the token",
            code="train-denied",
        )
    launch = plan_launch(
        job, plan, job_path=Path(args.job).resolve(), host=host, decision_id=outcome.decision_id
    )
    if args.dry_run:
        print(
            json.dumps(
                {
                    "decision_id": outcome.decision_id,
                    "argv": launch.argv,
                    "node_rank": launch.node_rank,
                    "nodes": launch.nodes,
                },
                indent=2,
            )
        )
        return 0
    print(
        f"aifactory-train: {job.name}: decision {outcome.decision_id} allows tenant {outcome.tenant}; "
        f"node {launch.node_rank + 1} of {launch.nodes}",
        file=sys.stderr,
        flush=True,
    )
    result = subprocess.run(launch.argv, env=launch.env, preexec_fn=_die_with_parent, check=False)  # noqa: PLW1509
    if result.returncode != 0:
        raise AifactoryError(
            f"training job {job.name} failed (torchrun exit {result.returncode})",
            code="train-failed",
            exit_code=ExitCode.HOSTS_FAILED,
            hint="relaunch the same job: it resumes from the last complete checkpoint",
        )
    return 0


def _generate(job: JobSpec, plan: RuntimePlan, *, samples: int, offset: int, extend: bool) -> int:
    target = plan.dataset_dir(job.dataset)
    if (target / "manifest.json").exists():
        found = datasets.load(target)  # checks it
        if not extend or len(found) >= samples:
            print(f"dataset {job.dataset} already at {target} ({len(found)} samples)", file=sys.stderr)
            return 0
    manifest = datasets.generate(
        target, name=job.dataset, samples=samples, seed=job.train.seed, offset=offset, extend=extend
    )
    print(
        f"wrote dataset {job.dataset}: {manifest['samples']} samples in {len(manifest['shards'])} shard(s) "
        f"at {target}",
        file=sys.stderr,
    )
    return 0


def _count(text: str) -> int:
    """A number of samples, 0 or more (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of samples: {text[:40]!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: use 0 or more samples")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = UsageParser(prog="aifactory-train", description="Run a training job on the cluster.")
    parser.add_argument("job", help="job file (aifactory.job/v1 YAML)")
    parser.add_argument("--host", help="this host's name in the plan (default: the hostname)")
    parser.add_argument(
        "--dry-run", action="store_true", help="decide, print the torchrun command, start nothing"
    )
    parser.add_argument(
        "--generate-dataset",
        action="store_true",
        help="write the job's dataset (generated, aifactory.dataset/v1) at its planned path, and exit",
    )
    parser.add_argument("--samples", type=int, default=4096, help="samples to generate (default 4096)")
    parser.add_argument(
        "--offset",
        type=_count,
        default=0,
        help="start at this sample of the seed's draw (default 0): a held-out set of the same task, past "
        "the samples the training data holds",
    )
    parser.add_argument(
        "--extend",
        action="store_true",
        help="replace a smaller draw (same seed and offset) with this larger one; versions and feedback "
        "are kept",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_console(run, argv)


if __name__ == "__main__":
    sys.exit(main())
