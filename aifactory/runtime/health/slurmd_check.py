"""The node's own health check, as slurmd's `HealthCheckProgram` runs it every HealthCheckInterval
seconds (docs/health.md, "Continuous health"):

    python -m aifactory.runtime.health.slurmd_check [--task /etc/aifactory/health/node-task.json]

It runs the quick checks of the node's task on this node (aifactory.runtime.health.node; no torch),
judges them with the health policy as `aifactory health` does, and on a failing verdict drains its
own node with the gate's reason (`aifactory-health: <checks>`); on a pass it resumes the node only
when aifactory drained it, by the gate's rule (aifactory.health.slurm.decide_node). A node whose
munge or slurmd died cannot run this: the control host's runs catch those.

The task file holds the node's HostTask and how it is judged: {"task": ..., "thresholds": ...,
"expected": [...], "drain_limits": ...} (thresholds and expected checks as the policy takes them;
the site's drain budget resolved against the plan, as the gate uses it). The control host's health
runs write it (aifactory.health.node_tasks, through `--install`).

The drain budget holds here too: a fault every node shares (the site storage) makes every node's own
check fail at once, and each would drain itself. Before draining, the node counts the nodes aifactory
holds drained (`scontrol show node`, every node) against its pool's and the site's limits; past them
it stays in service and says so (the control host's runs raise the site's incident). Without
`drain_limits` in the task file the node never drains itself: fail safe for the site's capacity, as a
missing budget must not mean an unlimited one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.console import DEBUG_HELP, UsageParser, run_console
from aifactory.errors import UsageError
from aifactory.health.budget import DrainLimits
from aifactory.health.run import decide, health_policy
from aifactory.health.slurm import NodeState, budget_ledger, decide_node, drained_for, parse_show_node
from aifactory.runtime.health.model import HostTask
from aifactory.runtime.health.node import run_checks
from aifactory.scheduler.slurm import checked

DEFAULT_TASK = Path("/etc/aifactory/health/node-task.json")
SCONTROL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class NodeTask:
    task: HostTask
    thresholds: dict[str, Any]
    expected: tuple[str, ...]
    limits: DrainLimits | None  # None: an older task file; the node then never drains itself


@dataclass(frozen=True)
class LocalSlurm:
    """Slurm's commands on this node (slurmd's node has slurm-client and munge)."""

    where: str = "this node"

    def run(self, argv: Sequence[str], *, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=SCONTROL_TIMEOUT_S,
            check=False,
        )


def read_node_task(path: Path) -> NodeTask:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read the node's health task {path}: {exc.strerror}") from exc
    return parse_node_task(text, str(path))


def parse_node_task(text: str, where: str) -> NodeTask:
    try:
        data = json.loads(text)
        return NodeTask(
            HostTask.from_dict({**data["task"], "level": "quick"}),
            dict(data["thresholds"]),
            tuple(str(check) for check in data["expected"]),
            DrainLimits.from_dict(data["drain_limits"]) if data.get("drain_limits") is not None else None,
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"{where} is not a node health task: {exc}") from exc


def install_node_task(text: str, path: Path) -> bool:
    """Write the control host's task document to `path` after checking it reads as a task; atomic
    (a temporary file beside it, then a rename), and only when it changed. Whether it changed."""
    parse_node_task(text, "the task on standard input")
    try:
        if path.is_file() and path.read_text() == text:
            return False
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text)
        temporary.chmod(0o644)  # no secret in it: what is checked and the thresholds
        os.replace(temporary, path)
    except OSError as exc:
        raise UsageError(f"cannot write the node's health task {path}: {exc.strerror}") from exc
    return True


def check_node(node_task: NodeTask, client: LocalSlurm) -> dict[str, Any]:
    """Check this node, judge it, and drain or resume it in Slurm by the gate's rule."""
    task = node_task.task
    measurements = run_checks(task)
    facts = {
        "host": task.host,
        "reachable": True,
        "measurements": [m.as_dict() for m in measurements],
        "thresholds": node_task.thresholds,
        "expected": list(node_task.expected),
        "pool": {"bandwidth": []},
    }
    verdict = decide(health_policy(), task.host, facts)
    states = _slurm_states(client)
    node = states.get(task.host, NodeState(task.host, "", ""))
    action = decide_node(task.host, verdict.verdict, verdict.reasons, node, node_task.expected)
    if action["action"] == "resume" and not _lifts(node, node_task.expected):
        action = {
            "host": task.host,
            "action": "none",
            "why": "drained for what only the control host's runs check: left to them",
            "was": node.reason,
        }
    new_drain = bool(action.pop("new_drain", False))
    if new_drain and not _within_budget(task.host, states, node_task.limits):
        action = _spared(task.host, action["reason"], node_task.limits is not None)
        new_drain = False
    settings = action.pop("settings", None)
    if settings:
        _update(client, task.host, settings)
    if new_drain and _lost_a_race(task.host, states, node_task.limits, client):
        _update(client, task.host, ["state=resume"])
        action = {**_spared(task.host, action["reason"], True), "raced": True}
    return {"host": task.host, "verdict": verdict.verdict, "reasons": verdict.reasons, "slurm": action}


def _slurm_states(client: LocalSlurm) -> dict[str, NodeState]:
    shown = checked(
        client.run(["scontrol", "--oneliner", "show", "node"]), "scontrol show node", client.where
    )
    return parse_show_node(shown)


def _spared(host: str, reason: str, budgeted: bool) -> dict[str, Any]:
    return {
        "host": host,
        "action": "none",
        "why": "over the drain budget: left in service (the control host's runs raise the incident)"
        if budgeted
        else "no drain budget in the task file: this node does not drain itself",
        "reason": reason,
        "over_budget": True,
    }


def _update(client: LocalSlurm, host: str, settings: Sequence[str]) -> None:
    argv = ["scontrol", "update", f"nodename={host}", *settings]
    checked(client.run(argv), " ".join(argv[:3]), client.where)


def _lost_a_race(
    host: str, before: dict[str, NodeState], limits: DrainLimits | None, client: LocalSlurm
) -> bool:
    """Nodes check themselves independently: a fault they share (the site storage) can make several
    see the budget free at the same moment and all drain. Read Slurm again after draining: when the
    budget is now overspent and another node drained itself meanwhile whose name sorts first, that
    one keeps its drain and this one goes back into service (each racing node reaches the same
    answer, so exactly the first ones keep theirs)."""
    if limits is None:
        return False
    after = _slurm_states(client)
    held_before = {n.name for n in before.values() if n.drained_by_us}
    racing = [n.name for n in after.values() if n.drained_by_us and n.name not in held_before | {host}]
    over = not budget_ledger(after, limits, released={host}).take(host)
    return over and any(name < host for name in racing)


def _lifts(node: NodeState, checked_here: Sequence[str]) -> bool:
    """The node lifts only a drain whose every reason it checked itself: never the admission (the
    control host's standard run admits), a peer's check or a host-unreachable."""
    return set(drained_for(node.reason)) <= set(checked_here)


def _within_budget(host: str, states: dict[str, NodeState], limits: DrainLimits | None) -> bool:
    """Whether one more drain (this node's) fits its pool's and the site's budgets, counting every
    node aifactory holds drained now."""
    if limits is None:
        return False
    return budget_ledger(states, limits, released={host}).take(host)


def main(argv: Sequence[str] | None = None) -> int:
    return run_console(_run, argv, log_format=None)


def _run(arguments: list[str]) -> int:
    parser = UsageParser(
        prog="python -m aifactory.runtime.health.slurmd_check",
        description="Slurm's HealthCheckProgram: check this node, drain it when it fails, resume it "
        "when it passes and aifactory drained it. Exit 0 either way (slurmd logs a non-zero exit).",
    )
    parser.add_argument(
        "--task", type=Path, default=DEFAULT_TASK, help=f"the node's task (default {DEFAULT_TASK})"
    )
    parser.add_argument(
        "--install",
        action="store_true",
        help="write the task read on standard input to --task (the control host's health run does)",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(arguments)
    if args.install:
        print(json.dumps({"changed": install_node_task(sys.stdin.read(), args.task)}))
        return 0
    print(json.dumps(check_node(read_node_task(args.task), LocalSlurm()), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
