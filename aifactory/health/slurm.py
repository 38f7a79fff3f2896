"""Verdicts applied to Slurm: a failing host is drained with the reason `aifactory-health: <check>`;
a passing host is resumed only when aifactory drained it (its reason starts with our prefix), so a
node an operator drained stays drained. Runs Slurm's commands as the site's Connection runs them on
the control host (aifactory.scheduler.slurm)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from aifactory.health.budget import BudgetLedger, DrainLimits, Incident, incident_for
from aifactory.health.run import HealthRun
from aifactory.health.tasks import COMPUTE_ROLES
from aifactory.scheduler.slurm import SlurmClient, checked

REASON_PREFIX = "aifactory-health:"
# Where the nodes a passing run admitted are recorded, on the controller: the slurm role drains every
# node without a record when slurm_health_admission is on (playbooks/roles/slurm/tasks/admission.yml).
ADMITTED_DIR = "/var/lib/aifactory/health/admitted"
# Reason codes that name one check: a drain for one of them is lifted only by a run that checked it.
CHECK_REASONS = (
    "allreduce-busbw",
    "tcp-bandwidth",
    "storage-write",
    "storage-read",
    "gpu-h2d-bandwidth",
    "dcgm-diag-failures",
)
DRAINED_STATES = ("DRAIN", "DRAINED", "DRAINING")


@dataclass(frozen=True)
class NodeState:
    name: str
    state: str  # scontrol's State=, e.g. IDLE+DRAIN
    reason: str

    @property
    def drained(self) -> bool:
        return any(flag in self.state.split("+") for flag in DRAINED_STATES)

    @property
    def drained_by_us(self) -> bool:
        return self.drained and self.reason.startswith(REASON_PREFIX)


def parse_show_node(text: str) -> dict[str, NodeState]:
    """`scontrol show node --oneliner` output: State= and Reason= per NodeName= (Reason runs to the
    end of the line's `Reason=` field, which holds spaces and ends at ` [user@time]`)."""
    nodes = {}
    for line in text.splitlines():
        fields = _fields(line)
        name = fields.get("NodeName")
        if name:
            reason = fields.get("Reason", "")
            reason = reason.rsplit(" [", 1)[0] if reason.endswith("]") else reason
            nodes[name] = NodeState(name, fields.get("State", ""), reason)
    return nodes


def _fields(line: str) -> dict[str, str]:
    found: dict[str, str] = {}
    if "Reason=" in line:
        line, _, reason = line.partition("Reason=")
        found["Reason"] = reason.strip()
    for word in line.split():
        key, sep, value = word.partition("=")
        if sep:
            found[key] = value
    return found


def drained_for(reason: str) -> list[str]:
    """The reason codes in one of our drain reasons."""
    return [code.strip() for code in reason.removeprefix(REASON_PREFIX).split(",") if code.strip()]


def reason_for(reasons: Sequence[str]) -> str:
    return f"{REASON_PREFIX} {','.join(reasons) if reasons else 'unknown'}"


@dataclass(frozen=True)
class Applied:
    """What the gate told Slurm, host by host, and the incident when the drain budget was spent."""

    actions: list[dict[str, Any]]
    incident: Incident | None = None


def apply_verdicts(run: HealthRun, client: SlurmClient, limits: DrainLimits) -> Applied:
    """Drain the failing compute hosts within the drain budget, resume the passing ones aifactory
    drained, record the admitted ones; past the budget, no more drains and one incident."""
    names = [h.name for h in run.hosts if h.plan.host.role in COMPUTE_ROLES]
    if not names:
        return Applied([])
    states = parse_show_node(
        checked(client.run(["scontrol", "--oneliner", "show", "node"]), "scontrol show node", client.where)
    )
    decided: dict[str, dict[str, Any]] = {}
    for result in run.hosts:
        if result.name not in names:
            continue
        node = states.get(result.name)
        decided[result.name] = (
            decide_node(result.name, result.verdict, result.reasons, node, result.plan.expected)
            if node is not None
            else {"host": result.name, "action": "none", "why": "not a Slurm node"}
        )
    incident = _within_budget(run, states, decided, limits)
    for action in decided.values():
        if action["action"] != "none":
            _update(client, action["host"], *action.pop("settings"))
    actions = list(decided.values())
    admitted = [a["host"] for a in actions if a.get("admitted")]
    if admitted:
        _record_admitted(client, admitted)
    return Applied(actions, incident)


def _within_budget(
    run: HealthRun, states: dict[str, NodeState], decided: dict[str, dict[str, Any]], limits: DrainLimits
) -> Incident | None:
    """Turn the new drains past the budget into `none` (the host stays in service) and say why. Held
    against the budget: every node aifactory drained that this run does not resume, checked or not."""
    resumed = {name for name, action in decided.items() if action["action"] == "resume"}
    ledger = budget_ledger(states, limits, released=resumed)
    failing = {
        h.name: h.reasons or ["unknown"] for h in run.hosts if h.name in decided and h.verdict != "admit"
    }
    drained, spared = [n for n in ledger.held_nodes if n in failing], []
    for name, action in decided.items():
        if not action.get("new_drain"):
            continue
        if ledger.take(name):
            drained.append(name)
            continue
        spared.append(name)
        decided[name] = {
            "host": name,
            "action": "none",
            "why": "over the drain budget: left in service (see the incident)",
            "reason": action["reason"],
            "over_budget": True,
        }
    for action in decided.values():
        action.pop("new_drain", None)
    return incident_for(ledger, failing, drained, spared)


def budget_ledger(
    states: dict[str, NodeState], limits: DrainLimits, *, released: Collection[str] = ()
) -> BudgetLedger:
    """The drain budget as Slurm stands: every node aifactory holds drained counts against it, but
    the `released` ones (resumed by this run). The gate and the node's own check both count so."""
    return BudgetLedger(
        limits, [n.name for n in states.values() if n.drained_by_us and n.name not in released]
    )


def _record_admitted(client: SlurmClient, names: list[str]) -> None:
    """Mark each node as admitted on the controller (node names come from the plan: checked names)."""
    checked(client.run(["mkdir", "-p", ADMITTED_DIR]), "mkdir", client.where)
    checked(client.run(["touch", *(f"{ADMITTED_DIR}/{name}" for name in names)]), "touch", client.where)


def decide_node(
    name: str,
    verdict: str,
    reasons: list[str],
    node: NodeState,
    checked_now: Sequence[str],
) -> dict[str, Any]:
    """What to tell Slurm about one node; `settings` holds the scontrol update's arguments. The node's
    own health check (aifactory.runtime.health.slurmd_check) follows the same rule."""
    if verdict == "admit":
        unchecked = sorted(set(drained_for(node.reason)) & set(CHECK_REASONS) - set(checked_now))
        if node.drained_by_us and unchecked:  # e.g. drained for the all-reduce, now a quick run
            why = f"drained for {', '.join(unchecked)}: not checked at this level"
            return {"host": name, "action": "none", "why": why}
        if node.drained_by_us:
            return {
                "host": name,
                "action": "resume",
                "was": node.reason,
                "admitted": True,
                "settings": ["state=resume"],
            }
        why = "drained by someone else" if node.drained else "in service"
        return {"host": name, "action": "none", "why": why, "admitted": True}
    reason = reason_for(reasons)
    if node.drained and not node.drained_by_us:  # an operator's drain and reason stand
        return {"host": name, "action": "none", "why": "drained by someone else", "reason": node.reason}
    if node.drained and node.reason == reason:
        return {"host": name, "action": "none", "why": "already drained", "reason": reason}
    drain = {
        "host": name,
        "action": "drain",
        "reason": reason,
        "settings": ["state=drain", f"reason={reason}"],
    }
    # A node already drained by aifactory only has its reason brought up to date: not a new drain.
    return drain if node.drained else {**drain, "new_drain": True}


def _update(client: SlurmClient, name: str, *settings: str) -> None:
    argv = ["scontrol", "update", f"nodename={name}", *settings]
    checked(client.run(argv), " ".join(argv[:3]), client.where)
