"""Growing and shrinking pools: the plan last deployed against the spec's, and the steps between.

What changes (`describe_resize`): the hosts added and removed, and on each host that stays exactly
what the roles rewrite because the host list changed: Slurm's node list (slurm.conf, on the
controller and every node) with the cluster block of /etc/hosts beside it, the front door's backends
(on the front door's host), and Prometheus's scrape targets (on the monitoring host). A host whose
addresses, pool or mounts changed is no resize: it is refused (`plan --diff` shows why).

The steps (`run_resize`), each idempotent, so a re-run after an interruption or a failed step goes
on (the record of where it began, `<state>/resize/pending.json`, keeps the plan it started from):

1. removed hosts: drained in Slurm (running jobs finish; past the drain timeout they are requeued and
   resume from their checkpoint), then drained at the front door;
2. added hosts: ready to be deployed (provisioned; on the lab, its namespaces: the edge's choice);
3. one deploy of the site's new plan: the added hosts get every role, the others the changes above.
   The removed hosts leave slurm.conf, /etc/hosts and the front door's backends with it; Slurm's
   daemons read the new node list when the slurm role restarts them (Slurm 22.05, Debian 12's, reads
   added or removed nodes only on a restart, not on `scontrol reconfigure`; running jobs survive both);
4. added hosts: the health gate, which admits them in Slurm; then up at the front door;
5. the removed hosts are retired (`<state>/resize/retired.json`, the audit's CM-8 lists them). Nothing
   on them or on shared storage is deleted, and they are left powered, their services as they were.

Every resize writes its records to the operator log (aifactory.lifecycle.records; the audit's CM-3).
The orchestration knows the site only through the seams (aifactory.lifecycle.seams, and `NewHosts`
and `SiteDeploy` here); aifactory.lifecycle.site_parts holds the real parts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from aifactory.durable import atomic_write
from aifactory.errors import Location, Problem, ResizeError, ResizeFailed, StateError
from aifactory.lifecycle import records
from aifactory.lifecycle.records import ChangeLog
from aifactory.lifecycle.seams import FrontDoor, HealthGate, SlurmDrain, StepOutcome
from aifactory.lifecycle.upgrade import DRAIN_REASON, REQUEUE_GRACE_S
from aifactory.plan.diff import diff_plans
from aifactory.plan.model import SitePlan
from aifactory.progress import SILENT, Progress
from aifactory.scheduler.topology import slurm_topology
from aifactory.state import SiteState

PENDING, RETIRED = "pending.json", "retired.json"
SLURM_NODES, ETC_HOSTS = "slurm.conf node list", "/etc/hosts (Slurm cluster block)"
DOOR_BACKENDS, SCRAPE_TARGETS = "front door backends", "Prometheus scrape targets"
SIGNED_PLAN = "signed site plan"
# What every host that stays gets: the resized plan comes in a new bundle version (the bundle signs
# the plan), whose runtime is the one the host has (the same wheels: the runtime role keeps it) and
# whose plan changes nothing the host's server serves (aifactory.plan.serving: no restart).
SIGNED_PLAN_CHANGE = (
    f"{SIGNED_PLAN}: the new bundle version's payload carried and verified, plan.json rewritten "
    "(the installed runtime and its service kept)"
)


class NewHosts(Protocol):
    def ready(self, hosts: Sequence[str]) -> None:
        """The added hosts can be deployed (raise saying why not): provisioned and reachable; on the
        lab, their namespaces are there."""


class SiteDeploy(Protocol):
    def deploy(self) -> StepOutcome:
        """One deploy of the site's (new) plan to every host in it; `detail` names the event log and
        each host's changed task count."""


@dataclass(frozen=True)
class ResizeParts:
    """The site's parts the resize acts through, chosen by the edge."""

    slurm: SlurmDrain
    door: FrontDoor
    hosts: NewHosts
    deployer: SiteDeploy
    gate: HealthGate  # admits the hosts that pass (in Slurm)
    log: ChangeLog
    progress: Progress = SILENT


@dataclass(frozen=True)
class Resize:
    """What a resize changes: from the plan last deployed to the spec's."""

    site: str
    old_digest: str
    new_digest: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    reconfigured: Mapping[str, tuple[str, ...]]  # host that stays -> what the roles rewrite there

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "from_plan": self.old_digest,
            "to_plan": self.new_digest,
            "added": list(self.added),
            "removed": list(self.removed),
            "reconfigured": {host: list(what) for host, what in self.reconfigured.items()},
        }

    def render(self) -> str:
        if self.empty:
            return "no host added or removed: nothing to resize"
        lines = [f"+ {name}" for name in self.added] + [f"- {name}" for name in self.removed]
        for host, what in self.reconfigured.items():
            lines.append(f"~ {host}")
            lines += [f"    {line}" for line in what]
        lines.append(
            f"{len(self.added)} added, {len(self.removed)} removed (drained, data kept), "
            f"{len(self.reconfigured)} reconfigured"
        )
        return "\n".join(lines)


def describe_resize(old: SitePlan, new: SitePlan) -> Resize:
    """The resize from `old` (last deployed) to `new`; a ResizeError when it is more than a resize."""
    difference = diff_plans(old.to_dict(), new.to_dict())
    if difference.changed:
        problems = [
            Problem("host-changed", f"{host}: {change}")
            for host, changes in difference.changed.items()
            for change in changes
        ]
        raise ResizeError(
            f"{len(difference.changed)} host(s) that stay would change, not only the host count",
            code="resize-not-only-counts",
            problems=problems,
            hint="a resize only raises or lowers pool counts; deploy other changes with `aifactory deploy`",
        )
    added, removed = tuple(difference.added), tuple(difference.removed)
    reconfigured: dict[str, list[str]] = {}
    if added or removed:
        for host, line in _reconfigurations(old, new):
            if host not in added:
                reconfigured.setdefault(host, []).append(line)
        for staying in new.hosts:
            if staying.name not in added:
                reconfigured.setdefault(staying.name, []).append(SIGNED_PLAN_CHANGE)
    return Resize(
        new.name,
        old.digest(),
        new.digest(),
        added,
        removed,
        {host: tuple(reconfigured[host]) for host in sorted(reconfigured)},
    )


def _reconfigurations(old: SitePlan, new: SitePlan) -> list[tuple[str, str]]:
    """(host, what changes there) for every file the roles render from the host list."""
    out: list[tuple[str, str]] = []
    old_slurm, new_slurm = slurm_topology(old), slurm_topology(new)
    if new_slurm is not None:
        before = [n["name"] for n in old_slurm["nodes"]] if old_slurm else []
        change = _change([n["name"] for n in new_slurm["nodes"]], before)
        if change:
            members = [new_slurm["controller"]["name"], *(n["name"] for n in new_slurm["nodes"])]
            for host in dict.fromkeys(members):
                out += [(host, f"{SLURM_NODES}: {change}"), (host, f"{ETC_HOSTS}: {change}")]
    if new.front_door is not None:
        before = [b.name for b in old.front_door.backends] if old.front_door else []
        change = _change([b.name for b in new.front_door.backends], before)
        if change:
            out.append((new.front_door.host, f"{DOOR_BACKENDS}: {change}"))
    if new.monitored:
        change = _change([h.name for h in new.hosts], [h.name for h in old.hosts])
        if change:
            out.append((_monitoring_host(new), f"{SCRAPE_TARGETS}: {change}"))
    return out


def _monitoring_host(plan: SitePlan) -> str:
    from aifactory.telemetry.status import monitoring_host

    return monitoring_host(plan)


def _change(after: Sequence[str], before: Sequence[str]) -> str:
    """'+ a, b; - c' (empty when the lists name the same hosts)."""
    plus = [n for n in after if n not in before]
    minus = [n for n in before if n not in after]
    parts = ([f"+ {', '.join(plus)}"] if plus else []) + ([f"- {', '.join(minus)}"] if minus else [])
    return "; ".join(parts)


@dataclass(frozen=True)
class ResizeStore:
    """`<state>/resize/`: the resize in progress (the plan it started from and its run id) and the
    hosts retired so far; and the plan of record the deploy keeps (`<state>/deploy/plan.json`)."""

    state: SiteState

    @property
    def folder(self) -> Path:
        return self.state.subdir("resize")

    def pending(self) -> dict[str, Any] | None:
        return _read_json(self.folder / PENDING)

    def begin(self, resize: Resize, old: SitePlan) -> tuple[str, bool]:
        """The run id of this resize, and whether it resumes one in progress (the same new plan)."""
        pending = self.pending()
        if pending is not None:
            if pending.get("to_plan") != resize.new_digest:
                raise ResizeError(
                    f"a resize to plan {pending.get('to_plan')} is in progress; this one is to "
                    f"{resize.new_digest}",
                    code="resize-in-progress",
                    location=Location(file=str(self.folder / PENDING)),
                    hint="finish it first: run `aifactory resize` with the spec it was started with",
                )
            return str(pending["run"]), True
        run = f"{_now().replace(':', '')}-resize"
        body = {"run": run, "from_plan": old.digest(), "to_plan": resize.new_digest, "old": old.to_dict()}
        atomic_write(self.folder / PENDING, (json.dumps(body, sort_keys=True) + "\n").encode(), mode=0o600)
        return run, False

    def started_from(self) -> SitePlan | None:
        """The plan a resize in progress started from (a re-run compares with it, not with the plan
        its own deploy has since recorded)."""
        pending = self.pending()
        if pending is None:
            return None
        try:
            return SitePlan.from_dict(pending["old"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(
                f"the resize in progress cannot be read: {exc}",
                code="resize-pending",
                location=Location(file=str(self.folder / PENDING)),
            ) from None

    def retired(self) -> dict[str, dict[str, str]]:
        """host -> {"retired_at", "run"}: hosts a resize took out of the site."""
        found = _read_json(self.folder / RETIRED) or {}
        hosts = found.get("hosts")
        return dict(hosts) if isinstance(hosts, dict) else {}

    def finish(self, resize: Resize, run: str) -> None:
        """Retire the removed hosts (an added host that was retired before is current again), and end
        the resize in progress."""
        hosts = {h: v for h, v in self.retired().items() if h not in resize.added}
        hosts |= {h: {"retired_at": _now(), "run": run} for h in resize.removed}
        body = {"site": self.state.site, "hosts": dict(sorted(hosts.items()))}
        atomic_write(
            self.folder / RETIRED, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode(), mode=0o600
        )
        (self.folder / PENDING).unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StateError(f"{path} cannot be read: {exc}", location=Location(file=str(path))) from None
    if not isinstance(data, dict):
        raise StateError(f"{path} is not a JSON object", location=Location(file=str(path)))
    return data


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class ResizeResult:
    resize: Resize
    run: str
    resumed: bool
    requeued: list[str] = field(default_factory=list)
    deploy: dict[str, Any] = field(default_factory=dict)  # the deploy's event log, changed per host
    gate: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.resize.as_dict(),
            "run": self.run,
            "resumed": self.resumed,
            "status": "done",
            "requeued": self.requeued,
            "deploy": self.deploy,
            "gate": self.gate,
            "retired_data_kept": True,
        }


def run_resize(
    resize: Resize, old: SitePlan, store: ResizeStore, parts: ResizeParts, *, drain_timeout_s: float
) -> ResizeResult:
    """Drain the removed hosts, deploy the new plan, gate and admit the added hosts, retire the
    removed ones; a failed step raises ResizeFailed and leaves the resize open for a re-run."""
    run, resumed = store.begin(resize, old)
    change = records.Change(
        "resize", run, resize.old_digest, resize.old_digest, resize.new_digest, resize.new_digest
    )
    if not resumed:
        records.resize_started(
            parts.log, change, added=resize.added, removed=resize.removed, reconfigured=resize.reconfigured
        )
    result = ResizeResult(resize, run, resumed)
    progress = parts.progress
    if resize.removed:
        progress.step(f"drain {', '.join(resize.removed)} in Slurm", total_items=len(resize.removed))
        result.requeued = _drain_slurm(parts, change, resize.removed, drain_timeout_s)
        progress.step(f"drain {', '.join(resize.removed)} at the front door", total_items=len(resize.removed))
        parts.door.drain(resize.removed)
    if resize.added:
        parts.hosts.ready(resize.added)
    progress.step("deploy the new plan (added hosts in full, the others reconfigured)")
    deployed = parts.deployer.deploy()
    result.deploy = dict(deployed.detail)
    _stop_unless(deployed, parts, change, step="deploy", hosts=[*resize.added, *resize.reconfigured])
    if resize.added:
        progress.step(f"health gate of {', '.join(resize.added)}", total_items=len(resize.added))
        gated = parts.gate.check(resize.added)
        result.gate = dict(gated.detail)
        _stop_unless(gated, parts, change, step="health-gate", hosts=resize.added)
        parts.door.enable(resize.added)
    store.finish(resize, run)
    records.resize_finished(parts.log, change, added=resize.added, removed=resize.removed)
    return result


def _drain_slurm(
    parts: ResizeParts, change: records.Change, hosts: Sequence[str], timeout_s: float
) -> list[str]:
    parts.slurm.drain(hosts, reason=f"{DRAIN_REASON} resize: leaving the site")
    running = parts.slurm.wait_for_jobs(hosts, timeout_s=timeout_s)
    if running:
        parts.slurm.requeue(running)
        records.jobs_requeued(parts.log, change, hosts=hosts, jobs=running, drain_timeout_s=timeout_s)
        parts.slurm.wait_for_jobs(hosts, timeout_s=REQUEUE_GRACE_S)
    return list(running)


def _stop_unless(
    outcome: StepOutcome, parts: ResizeParts, change: records.Change, *, step: str, hosts: Sequence[str]
) -> None:
    if outcome.passed:
        return
    reason = "; ".join(outcome.failures)
    records.step_failed(parts.log, change, step=step, hosts=hosts, reason=reason)
    where = ", ".join(f"{key}: {value}" for key, value in sorted(outcome.detail.items()) if key != "changed")
    raise ResizeFailed(
        f"the resize stopped: its {step} failed" + (f" (see {where})" if where else ""),
        problems=[Problem("failed-check", line) for line in outcome.failures],
        hint="fix those hosts, then run the same `aifactory resize` again: it goes on from where it stopped",
    )
