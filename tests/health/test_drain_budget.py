"""The drain budget (docs/health.md, "Continuous health"): one sick host is drained; a fault every host
shares drains no more than the budget and raises one incident naming the common check; a second run
with the same faults changes nothing more; recovery resumes only what aifactory drained.

Slurm itself runs in tests/health/test_health_lab.py. Here a small stand-in keeps each node's State
and Reason as slurmctld does for `scontrol update ... state=drain|resume` and answers `scontrol
--oneliner show node` in Slurm's format, so that a run's effect can be read back by the next run (the
real slurmctld needs the lab). The verdicts are set on real HostResults of a real plan."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from aifactory.health.budget import drain_limits
from aifactory.health.run import HealthRun, HostResult
from aifactory.health.slurm import Applied, apply_verdicts
from aifactory.health.tasks import HostPlan
from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan
from aifactory.runtime.health.model import HostTask
from aifactory.spec.model import DrainBudget, PoolDrainBudget

LAB = Path(__file__).resolve().parents[2] / "inventory" / "lab" / "site.yaml"
STORAGE = "storage-mounted-rw"


class SlurmNodes:
    """slurmctld's node table as `scontrol` shows and updates it (stand-in: see the module's text)."""

    where = "test"

    def __init__(self, names: Sequence[str], drained: dict[str, str] | None = None) -> None:
        self.nodes = {name: ("IDLE", "") for name in names}
        for name, reason in (drained or {}).items():
            self.nodes[name] = ("IDLE+DRAIN", reason)
        self.updates: list[list[str]] = []

    def run(self, argv: Sequence[str], *, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        out = ""
        if argv[:2] == ["scontrol", "update"]:
            self.updates.append(argv)
            name = argv[2].removeprefix("nodename=")
            if "state=drain" in argv:
                self.nodes[name] = ("IDLE+DRAIN", argv[-1].removeprefix("reason="))
            elif "state=resume" in argv:
                self.nodes[name] = ("IDLE", "")
        elif argv[:4] == ["scontrol", "--oneliner", "show", "node"]:
            out = "".join(
                f"NodeName={name} Arch=x86_64 State={state} Partitions=cpu"
                + (f" Reason={reason} [root@2026-12-02T01:00:00]" if reason else "")
                + "\n"
                for name, (state, reason) in self.nodes.items()
            )
        return subprocess.CompletedProcess(argv, 0, out, "")

    def drained(self) -> list[str]:
        return sorted(name for name, (state, _) in self.nodes.items() if "DRAIN" in state)


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> SitePlan:
    """The lab's spec with eight cpu hosts: a pool large enough for a budget of two (25 %)."""
    folder = tmp_path_factory.mktemp("site")
    text = LAB.read_text()
    assert "    role: cpu\n    count: 2\n" in text
    (folder / "site.yaml").write_text(
        text.replace("    role: cpu\n    count: 2\n", "    role: cpu\n    count: 8\n")
    )
    return plan_site(folder / "site.yaml", write_lock=False).plan


def _cpu_hosts(plan: SitePlan) -> list[str]:
    return [h.name for h in plan.hosts if h.role == "cpu"]


def _run(plan: SitePlan, failing: dict[str, list[str]]) -> HealthRun:
    """A quick run over every host of the plan; the hosts in `failing` drain for those reasons."""
    run = HealthRun(plan.name, "quick", "2026-12-02T01:00:00.000000Z")
    for host in plan.hosts:
        result = HostResult(HostPlan(host, HostTask(host.name, "quick"), {}, (STORAGE, "disk-free")))
        result.reachable = True
        result.verdict, result.reasons = (
            ("drain", failing[host.name]) if host.name in failing else ("admit", [])
        )
        run.hosts.append(result)
    return run


def _apply(
    plan: SitePlan, slurm: SlurmNodes, failing: dict[str, list[str]], budget: DrainBudget | None = None
) -> Applied:
    return apply_verdicts(_run(plan, failing), slurm, drain_limits(plan, budget))


def test_the_default_budget_is_one_host_or_a_quarter_of_a_pool(plan: SitePlan) -> None:
    limits = drain_limits(plan, None)
    assert limits.pools == {"cpu": 2} and limits.site == 2  # 25 % of 8
    lab = plan_site(LAB, write_lock=False).plan
    assert drain_limits(lab, None).pools == {"cpu": 1}  # 25 % of 2 is 0: one host all the same
    own = drain_limits(
        plan, DrainBudget(hosts=0, percent=50, site_hosts=3, pools=[PoolDrainBudget(pool="cpu", hosts=5)])
    )
    assert (own.pools, own.site) == ({"cpu": 5}, 3)


def test_one_sick_host_is_drained_and_no_incident(plan: SitePlan) -> None:
    names = _cpu_hosts(plan)
    slurm = SlurmNodes(names)
    applied = _apply(plan, slurm, {names[3]: ["disk-free"]})
    assert applied.incident is None
    assert slurm.drained() == [names[3]]
    assert slurm.nodes[names[3]][1] == "aifactory-health: disk-free"


def test_storage_failing_everywhere_drains_at_most_the_budget_and_raises_one_incident(plan: SitePlan) -> None:
    names = _cpu_hosts(plan)
    slurm = SlurmNodes(names)
    # Every host lost the site storage; two of them have a fault of their own as well.
    failing = {name: [STORAGE] for name in names}
    failing[names[5]] = ["disk-free", STORAGE]
    failing[names[6]] = [STORAGE, "tcp-bandwidth"]
    applied = _apply(plan, slurm, failing)

    assert len(slurm.drained()) == 2  # the budget: 25 % of the pool's 8 hosts
    assert slurm.drained() == names[:2]  # in the plan's order
    incident = applied.incident
    assert incident is not None
    assert incident.cause == (STORAGE,)
    assert incident.drained == tuple(names[:2]) and incident.spared == tuple(names[2:])
    assert ("cpu", 2) in incident.scopes
    assert STORAGE in incident.message() and "6 left in service" in incident.message()
    spared = [a for a in applied.actions if a.get("over_budget")]
    assert [a["host"] for a in spared] == names[2:]
    assert all(a["action"] == "none" for a in spared)
    assert incident.as_dict()["kind"] == "drain-budget-exceeded"


def test_a_second_run_with_the_same_faults_changes_nothing_more(plan: SitePlan) -> None:
    names = _cpu_hosts(plan)
    slurm = SlurmNodes(names)
    failing = {name: [STORAGE] for name in names}
    _apply(plan, slurm, failing)
    before, updates = dict(slurm.nodes), len(slurm.updates)
    again = _apply(plan, slurm, failing)
    assert slurm.nodes == before and len(slurm.updates) == updates  # no scontrol update at all
    assert again.incident is not None and again.incident.spared == tuple(names[2:])
    assert again.incident.drained == tuple(names[:2])  # held from the first run, not drained again


def test_recovery_resumes_only_what_aifactory_drained(plan: SitePlan) -> None:
    names = _cpu_hosts(plan)
    slurm = SlurmNodes(names, drained={names[7]: "disk swap, ticket 42"})  # an operator's drain
    _apply(plan, slurm, {name: [STORAGE] for name in names})
    assert slurm.drained() == [*names[:2], names[7]]
    recovered = _apply(plan, slurm, {})
    assert recovered.incident is None
    assert slurm.drained() == [names[7]]  # the operator's drain stands
    assert slurm.nodes[names[7]][1] == "disk swap, ticket 42"
    assert sorted(a["host"] for a in recovered.actions if a["action"] == "resume") == names[:2]


def test_hosts_already_drained_count_against_the_budget_and_stay_drained(plan: SitePlan) -> None:
    """Two hosts drained by an earlier run for their own faults spend the pool's budget: a shared
    fault afterwards drains no other host, and those two keep their drain (reason brought up to date)."""
    names = _cpu_hosts(plan)
    slurm = SlurmNodes(
        names, drained={names[0]: "aifactory-health: disk-free", names[1]: "aifactory-health: admission"}
    )
    applied = _apply(plan, slurm, {name: [STORAGE] for name in names})
    assert slurm.drained() == names[:2]
    assert slurm.nodes[names[1]][1] == "aifactory-health: storage-mounted-rw"
    assert applied.incident is not None and applied.incident.spared == tuple(names[2:])


def test_the_site_budget_caps_the_pools(plan: SitePlan) -> None:
    names = _cpu_hosts(plan)
    slurm = SlurmNodes(names)
    applied = _apply(
        plan, slurm, {n: ["disk-free"] for n in names[:3]}, DrainBudget(percent=100, site_hosts=1)
    )
    assert slurm.drained() == names[:1]
    assert applied.incident is not None
    assert applied.incident.scopes == (("site", 1),) and applied.incident.cause == ("disk-free",)


def test_failing_hosts_without_a_common_check_say_so(plan: SitePlan) -> None:
    names = _cpu_hosts(plan)
    slurm = SlurmNodes(names)
    failing = {
        names[0]: ["disk-free"],
        names[1]: ["tcp-bandwidth"],
        names[2]: ["memory-available"],
        names[3]: ["disk-free"],
    }
    applied = _apply(plan, slurm, failing)
    assert applied.incident is not None and applied.incident.cause == ()
    assert "no check common to them all" in applied.incident.message()
