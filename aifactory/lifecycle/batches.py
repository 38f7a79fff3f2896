"""Which hosts an upgrade takes together, in which order: a pure function of the site's hosts and the
batch size the admin asked for (`--batch N` or `--batch 25%`).

The rules, in the order they bind:
- Slurm's controller (slurmctld's host) goes first, in a batch of its own: slurmd on the newer
  version never talks to an older controller (Slurm supports a newer controller with older daemons,
  not the reverse). A rollback takes it last, in a batch of its own, for the same reason.
- Serving hosts are never all in one batch, so the front door always has a host to send to. A site
  that serves from one host cannot be upgraded without a gap: refused, saying so.
- Otherwise the plan's host order, cut into batches of the asked size: the same hosts and size give
  the same batches, so a re-run after an interruption finds the batches its journal recorded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from aifactory.errors import UpgradeError
from aifactory.health.tasks import COMPUTE_ROLES
from aifactory.plan.model import SitePlan
from aifactory.scheduler.topology import slurm_topology

_SIZE = re.compile(r"(?P<count>[1-9][0-9]{0,5})(?P<percent>%?)")


@dataclass(frozen=True)
class UpgradeHost:
    """One host as the batching sees it."""

    name: str
    serving: bool = False  # behind the front door (or serving a model): never all of them at once
    slurm_controller: bool = False  # runs slurmctld


@dataclass(frozen=True)
class BatchSize:
    """`--batch`: a number of hosts, or a percentage of the site's hosts (at least one host)."""

    count: int
    percent: bool = False

    @classmethod
    def parse(cls, text: str) -> BatchSize:
        found = _SIZE.fullmatch(text.strip())
        if not found or (found["percent"] and int(found["count"]) > 100):
            raise UpgradeError(
                f"--batch {text!r} is not a number of hosts or a percentage",
                code="upgrade-batch-size",
                hint="give a whole number of hosts (e.g. 2) or a percentage from 1% to 100% (e.g. 25%)",
            )
        return cls(int(found["count"]), bool(found["percent"]))

    def hosts_per_batch(self, total: int) -> int:
        if not self.percent:
            return self.count
        return max(1, total * self.count // 100)

    def __str__(self) -> str:
        return f"{self.count}%" if self.percent else str(self.count)


def upgrade_hosts(plan: SitePlan) -> list[UpgradeHost]:
    """The plan's hosts in plan order, each marked serving and/or Slurm's controller."""
    serving = _serving_hosts(plan)
    controller = plan.control_host if slurm_topology(plan) is not None else None
    return [UpgradeHost(h.name, h.name in serving, h.name == controller) for h in plan.hosts]


def _serving_hosts(plan: SitePlan) -> set[str]:
    if plan.front_door is not None:
        return {backend.name for backend in plan.front_door.backends}
    pools = {pool for model in plan.models for pool in model.serve_on}
    return {h.name for h in plan.hosts if h.pool in pools and h.role in COMPUTE_ROLES}


def plan_batches(
    hosts: Sequence[UpgradeHost], size: BatchSize, *, controller_last: bool = False
) -> list[tuple[str, ...]]:
    """The batches in the order they are upgraded (module docstring for the rules); a rollback
    (to an older version) passes `controller_last`."""
    serving_total = sum(1 for h in hosts if h.serving)
    if serving_total == 1:
        only = next(h.name for h in hosts if h.serving)
        raise UpgradeError(
            f"the site serves from one host ({only}): upgrading it leaves clients with no host to serve them",
            code="upgrade-one-serving-host",
            hint="add a second host to a pool that serves models (the front door then sends to the "
            "other while one is upgraded), or upgrade with `aifactory deploy` in a maintenance window",
        )
    per_batch = size.hosts_per_batch(len(hosts))
    controllers: list[tuple[str, ...]] = [(h.name,) for h in hosts if h.slurm_controller]
    batches: list[tuple[str, ...]] = []
    current: list[UpgradeHost] = []
    for host in (h for h in hosts if not h.slurm_controller):
        serving_in_batch = sum(1 for h in current if h.serving) + int(host.serving)
        if current and (len(current) == per_batch or (host.serving and serving_in_batch == serving_total)):
            batches.append(tuple(h.name for h in current))
            current = []
        current.append(host)
    if current:
        batches.append(tuple(h.name for h in current))
    return batches + controllers if controller_last else controllers + batches
