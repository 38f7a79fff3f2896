"""What a host's inference server takes from the plan (aifactory.plan.serving): a change a server
reads changes its digest (so the runtime role restarts it); one it never reads does not. The lab's
plan, planned from inventory/lab/site.yaml without writing its lock; a resize's plans are in
tests/lifecycle/test_resize.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan
from aifactory.plan.serving import serving_digests, serving_views

LAB_SPEC = Path(__file__).resolve().parents[2] / "inventory" / "lab" / "site.yaml"


@pytest.fixture(scope="module")
def lab() -> SitePlan:
    return plan_site(LAB_SPEC, write_lock=False).plan


def test_each_host_sees_its_own_entry_and_no_other(lab: SitePlan) -> None:
    views = serving_views(lab)
    assert sorted(views) == sorted(h.name for h in lab.hosts)
    for host, view in views.items():
        assert [h["name"] for h in view["hosts"]] == [host]
        assert all("count" not in pool and "hosts" not in pool for pool in view["pools"])
        assert not {"summary", "spec_digest", "allocation"} & set(view)


def test_a_change_to_the_models_changes_every_hosts_digest(lab: SitePlan) -> None:
    model = lab.models[0]
    changed = replace(lab, models=(replace(model, serve_on=()), *lab.models[1:]))
    before, after = serving_digests(lab), serving_digests(changed)
    assert all(before[host] != after[host] for host in before)


def test_a_change_to_one_host_changes_that_hosts_digest_alone(lab: SitePlan) -> None:
    host = next(h for h in lab.hosts if h.mounts)
    changed = replace(lab, hosts=tuple(replace(h, mounts=()) if h is host else h for h in lab.hosts))
    before, after = serving_digests(lab), serving_digests(changed)
    assert {name for name in before if before[name] != after[name]} == {host.name}


def test_the_digests_are_the_same_for_the_same_plan(lab: SitePlan) -> None:
    again = plan_site(LAB_SPEC, write_lock=False).plan
    assert serving_digests(again) == serving_digests(lab)
