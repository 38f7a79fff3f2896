"""The upgrade's batches: slurmctld's host first, serving hosts never all at once, the size asked for,
the same batches every time (a resumed upgrade finds its journal's)."""

from __future__ import annotations

import pytest

from aifactory.errors import UpgradeError
from aifactory.lifecycle.batches import BatchSize, UpgradeHost, plan_batches, upgrade_hosts
from aifactory.plan.model import SitePlan

CONTROL = UpgradeHost("ctl", slurm_controller=True)
STORAGE = UpgradeHost("storage")


def _gpus(count: int, *, serving: int = 0) -> list[UpgradeHost]:
    return [UpgradeHost(f"gpu-{n:03d}", serving=n <= serving) for n in range(1, count + 1)]


def test_the_controller_goes_first_in_a_batch_of_its_own_then_the_plan_order() -> None:
    hosts = [*_gpus(3, serving=2), CONTROL, STORAGE]  # the controller late in the plan's order
    assert plan_batches(hosts, BatchSize.parse("2")) == [
        ("ctl",),
        ("gpu-001",),  # gpu-002 would put both serving hosts in one batch: it starts the next
        ("gpu-002", "gpu-003"),
        ("storage",),
    ]


@pytest.mark.parametrize("size", ["1", "2", "5", "50%", "100%"])
def test_serving_hosts_are_never_all_in_one_batch(size: str) -> None:
    hosts = [CONTROL, *_gpus(4, serving=3)]
    batches = plan_batches(hosts, BatchSize.parse(size))
    serving = {h.name for h in hosts if h.serving}
    assert all(not serving <= set(batch) for batch in batches)
    assert sorted(n for b in batches for n in b) == sorted(h.name for h in hosts)  # each host once


def test_two_serving_hosts_with_a_batch_of_everything_still_go_one_at_a_time() -> None:
    assert plan_batches(_gpus(2, serving=2), BatchSize.parse("100%")) == [("gpu-001",), ("gpu-002",)]


def test_a_percentage_is_of_every_host_and_at_least_one() -> None:
    hosts = _gpus(8)
    assert [len(b) for b in plan_batches(hosts, BatchSize.parse("25%"))] == [2, 2, 2, 2]
    assert [len(b) for b in plan_batches(hosts[:3], BatchSize.parse("10%"))] == [1, 1, 1]


def test_the_same_hosts_and_size_give_the_same_batches() -> None:
    hosts = [CONTROL, *_gpus(7, serving=4), STORAGE]
    assert plan_batches(hosts, BatchSize.parse("3")) == plan_batches(list(hosts), BatchSize.parse("3"))


def test_a_site_serving_from_one_host_is_refused_with_the_reason() -> None:
    with pytest.raises(UpgradeError) as raised:
        plan_batches([CONTROL, *_gpus(3, serving=1)], BatchSize.parse("1"))
    assert raised.value.code == "upgrade-one-serving-host"
    assert "gpu-001" in raised.value.message and "no host to serve" in raised.value.message


@pytest.mark.parametrize("text", ["0", "-1", "0%", "101%", "2.5", "a", "", "1e3", "25 %", "3;rm"])
def test_a_batch_size_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(UpgradeError) as raised:
        BatchSize.parse(text)
    assert raised.value.code == "upgrade-batch-size"


def test_the_lab_plan_marks_slurms_controller_and_the_serving_hosts(lab_plan: SitePlan) -> None:
    hosts = {h.name: h for h in upgrade_hosts(lab_plan)}
    assert [h.name for h in hosts.values()] == [h.name for h in lab_plan.hosts]
    assert [n for n, h in hosts.items() if h.slurm_controller] == [lab_plan.control_host]
    serving = {h.name for h in lab_plan.hosts if any(h.pool in m.serve_on for m in lab_plan.models)}
    assert {n for n, h in hosts.items() if h.serving} == serving and serving


def test_behind_a_front_door_the_serving_hosts_are_its_backends(fronted_lab_plan: SitePlan) -> None:
    door = fronted_lab_plan.front_door
    assert door is not None
    serving = {h.name for h in upgrade_hosts(fronted_lab_plan) if h.serving}
    assert serving == {b.name for b in door.backends} and len(serving) >= 2
    batches = plan_batches(upgrade_hosts(fronted_lab_plan), BatchSize.parse("100%"))
    assert batches[0] == (fronted_lab_plan.control_host,)
    assert all(not serving <= set(batch) for batch in batches)
