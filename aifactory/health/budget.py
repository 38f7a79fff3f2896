"""The drain budget: how many compute hosts the health gate may hold drained at once, per pool and for
the site, and the one incident it raises when more hosts fail than that.

A fault every host shares (the site storage unmounted, a core switch) makes every host fail its checks
at once; draining them all would turn one fault into a full outage. Past the budget the gate drains no
more, leaves the other failing hosts in service and raises one site-wide incident naming the checks
those hosts all failed: the common cause for an operator to fix. Hosts already drained stay drained.

The budget (docs/health.md): a pool may always lose `hosts` hosts, or `percent` of its hosts (rounded
down), whichever is larger, unless the spec gives the pool its own number; the site at most
`site_hosts` (default: the same rule over all the site's compute hosts). Only aifactory's own drains
count against it: a host an operator drained is out of service by a person's decision, not the gate's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aifactory.health.tasks import COMPUTE_ROLES
from aifactory.plan.model import SitePlan
from aifactory.spec.model import DrainBudget

INCIDENT_KIND = "drain-budget-exceeded"
SITE = "site"


@dataclass(frozen=True)
class DrainLimits:
    """The budget resolved against the plan: each compute host's pool, each pool's limit, the site's."""

    pool_of: Mapping[str, str]  # every compute host of the plan -> its pool
    pools: Mapping[str, int]
    site: int

    def limit(self, scope: str) -> int:
        return self.site if scope == SITE else self.pools[scope]

    def as_dict(self) -> dict[str, Any]:
        """For the node's task file (aifactory.runtime.health.slurmd_check)."""
        return {"pool_of": dict(sorted(self.pool_of.items())), "pools": dict(self.pools), "site": self.site}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DrainLimits:
        pool_of = {str(host): str(pool) for host, pool in dict(data["pool_of"]).items()}
        pools = {str(pool): _count(limit) for pool, limit in dict(data["pools"]).items()}
        missing = sorted(set(pool_of.values()) - set(pools))
        if missing:
            raise ValueError(f"no limit for pool {missing[0]}")
        return cls(pool_of, pools, _count(data["site"]))


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"a drain limit must be a whole number >= 0, got {value!r}")
    return value


def _rule(budget: DrainBudget, hosts: int) -> int:
    return max(budget.hosts, hosts * budget.percent // 100)


def drain_limits(plan: SitePlan, wanted: DrainBudget | None) -> DrainLimits:
    """The limits for `plan`'s compute hosts under the spec's budget (the defaults without one)."""
    budget = wanted if wanted is not None else DrainBudget()
    pool_of = {h.name: h.pool for h in plan.hosts if h.role in COMPUTE_ROLES}
    sizes: dict[str, int] = {}
    for pool in pool_of.values():
        sizes[pool] = sizes.get(pool, 0) + 1
    own = {p.pool: p.hosts for p in budget.pools}
    pools = {pool: own.get(pool, _rule(budget, size)) for pool, size in sorted(sizes.items())}
    site = budget.site_hosts if budget.site_hosts is not None else _rule(budget, len(pool_of))
    return DrainLimits(pool_of, pools, site)


@dataclass(frozen=True)
class Incident:
    """More compute hosts failed than the budget lets the gate drain: one incident for the site."""

    cause: tuple[str, ...]  # the checks every host left in service failed: the common cause
    scopes: tuple[tuple[str, int], ...]  # each exhausted budget: "site" or a pool, and its limit
    drained: tuple[str, ...]  # failing hosts held drained within the budget
    spared: tuple[str, ...]  # failing hosts left in service because the budget was spent

    def message(self) -> str:
        cause = ", ".join(self.cause) if self.cause else "no check common to them all"
        budgets = ", ".join(f"{scope} {limit}" for scope, limit in self.scopes)
        return (
            f"{len(self.drained) + len(self.spared)} compute hosts failed, more than the drain budget "
            f"({budgets}): {len(self.spared)} left in service ({', '.join(self.spared)}); "
            f"common cause: {cause}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": INCIDENT_KIND,
            "cause": list(self.cause),
            "budgets": [{"scope": scope, "limit": limit} for scope, limit in self.scopes],
            "drained": list(self.drained),
            "spared": list(self.spared),
            "message": self.message(),
        }


class BudgetLedger:
    """Counts the hosts aifactory holds drained, per pool and for the site, while the gate decides."""

    def __init__(self, limits: DrainLimits, held: Sequence[str]) -> None:
        self.limits = limits
        self.held_nodes = tuple(held)
        self.held: dict[str, int] = {SITE: 0}
        for name in held:
            self._count(name)
        self.exhausted: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.held[SITE] += 1
        pool = self.limits.pool_of.get(name)
        if pool is not None:
            self.held[pool] = self.held.get(pool, 0) + 1

    def take(self, name: str) -> bool:
        """One more drain for `name` if its pool's and the site's budgets allow it (then counted)."""
        full = [
            scope
            for scope in (self.limits.pool_of.get(name), SITE)
            if scope is not None and self.held.get(scope, 0) >= self.limits.limit(scope)
        ]
        for scope in full:
            self.exhausted[scope] = self.limits.limit(scope)
        if full:
            return False
        self._count(name)
        return True


def incident_for(
    ledger: BudgetLedger, failing: Mapping[str, Sequence[str]], drained: Sequence[str], spared: Sequence[str]
) -> Incident | None:
    """The incident when the budget left failing hosts in service (`failing`: host -> reason codes)."""
    if not spared:
        return None
    common = set(failing[spared[0]])
    for name in spared[1:]:
        common &= set(failing[name])
    return Incident(
        cause=tuple(sorted(common)),
        scopes=tuple(sorted(ledger.exhausted.items())),
        drained=tuple(drained),
        spared=tuple(spared),
    )
