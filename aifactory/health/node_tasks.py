"""Each compute node's own check, handed to it by the control host: the task file slurmd's
HealthCheckProgram reads (aifactory.runtime.health.slurmd_check; the slurm role sets the program and
its interval, docs/health.md "Continuous health").

The file is written by the gate (`aifactory health`, `aifactory up`'s health stage) on every compute
node it reaches, because only the control host holds what judges a node: the site spec's threshold
tightenings and drain budget are not in the signed plan that deploy renders inventories from. A node
that has no file yet runs no check of its own (its admission drain holds it out until the gate's
first run anyway).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

from aifactory.connection import Connection
from aifactory.errors import HealthError
from aifactory.health.budget import DrainLimits
from aifactory.health.remote import run_on_host
from aifactory.health.tasks import COMPUTE_ROLES, GPU_CHECKS, HostPlan, expected_checks, plan_hosts
from aifactory.health.thresholds import load_table
from aifactory.plan.model import Host, SitePlan
from aifactory.spec.model import HealthThreshold

NODE_TASK_PATH = PurePosixPath("/etc/aifactory/health/node-task.json")
NODE_CHECK_MODULE = "aifactory.runtime.health.slurmd_check"
INSTALL_TIMEOUT_S = 60.0
# What a node's own check judges: its own state, never a peer's (reachability and the bandwidth ring
# need both ends, which only the control host sees: alone, a node cannot tell its fault from its
# peer's), never the collective, and no storage throughput (fio every interval would load the site
# storage from every node; the gate measures it).
NODE_CHECKS = (
    "clock-offset",
    "disk-free",
    "inodes-free",
    "memory-available",
    "service-running",
    "link-up",
    "storage-mounted-rw",
    *GPU_CHECKS,
    "gpu-model-mismatch",
)
# Judged where chronyd answers, but not expected: the bound on the offset is the control host's.
NOT_EXPECTED_ON_NODE = ("clock-offset",)


def node_task_document(host_plan: HostPlan, limits: DrainLimits) -> dict[str, Any]:
    """The task file of one node: its quick task less what needs a peer, how the policy judges it,
    and the site's drain budget resolved against the plan."""
    if host_plan.task.level != "quick":
        raise HealthError("a node's own check runs the quick level", code="health-node-task")
    task = replace(host_plan.task, peers=(), bandwidth_peer=None, bandwidth_listen=None, fio_size_mib=0)
    expected = [c for c in expected_checks(task, collective=False) if c not in NOT_EXPECTED_ON_NODE]
    thresholds = {check: row for check, row in host_plan.policy_thresholds().items() if check in NODE_CHECKS}
    return {
        "task": task.as_dict(),
        "thresholds": thresholds,
        "expected": expected,
        "drain_limits": limits.as_dict(),
    }


def install_node_tasks(
    plan: SitePlan,
    hosts: Sequence[Host],
    *,
    connection: Connection,
    limits: DrainLimits,
    python: str,
    tightenings: Sequence[HealthThreshold] = (),
) -> dict[str, str]:
    """Write each compute host's task file (through its own runtime, which checks the document and
    replaces the file atomically only when it changed). Per host: `installed`, `unchanged` or why
    not; a host that cannot be reached keeps its last file."""
    compute = [h for h in hosts if h.role in COMPUTE_ROLES]
    if not compute:
        return {}
    table = load_table()
    plans = plan_hosts(
        plan, compute, level="quick", connection=connection, table=table, tightenings=tightenings
    )
    outcome = {}
    for host_plan in plans:
        document = json.dumps(node_task_document(host_plan, limits), sort_keys=True)
        answer = run_on_host(
            connection,
            host_plan.host.management_address,
            [python, "-m", NODE_CHECK_MODULE, "--install", "--task", str(NODE_TASK_PATH)],
            input_text=document,
            timeout=INSTALL_TIMEOUT_S,
        )
        outcome[host_plan.host.name] = _installed(answer.returncode, answer.stdout, answer.stderr)
    return outcome


def _installed(code: int, stdout: str, stderr: str) -> str:
    if code == 0:
        try:
            return "installed" if json.loads(stdout.strip().splitlines()[-1])["changed"] else "unchanged"
        except (ValueError, IndexError, KeyError, TypeError):
            pass
    lines = (stderr or stdout).strip().splitlines()
    return f"not installed: exit {code}: {lines[-1] if lines else 'no output'}"[:300]
