"""Hostile strings in a plan built directly (validation bypassed: the plan's JSON form edited and read
back with SitePlan.from_dict, which checks types, not grammars) never reach exports(5),
partitions.conf or the YAML documents as lines of their own: each is refused with UnsafeValueError
naming the value, or written as data (JSON-quoted YAML, read back literally), and no artifact gets
a line more than with a benign value."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from aifactory.errors import UnsafeValueError
from aifactory.plan.model import SitePlan, StoragePlan
from aifactory.provision.partitions import assign_pkeys, parse_partitions_conf
from aifactory.provision.render import render_fabric, render_storage

HOSTILE = [
    "{{ lookup('pipe', 'touch /tmp/aifactory-canary') }}",
    "/d *(rw,no_root_squash,insecure)",
    "/d\n/ *(rw,no_root_squash)",
    "/d\x00x",
    "/d\x1b[2J",
    "$(touch /tmp/aifactory-canary)",
    "`id`",
    "/d;reboot",
    "/a/../etc",
    "/a//b",
    "/" + "a" * 4999,
]


def _share(plan: SitePlan) -> StoragePlan:
    return next(s for s in plan.storage if s.kind == "nfs")


def _edited(plan: SitePlan, edit: Callable[[dict[str, Any]], None]) -> SitePlan:
    """The plan with `edit` applied to a copy of its JSON form, read back as a SitePlan."""
    data = copy.deepcopy(plan.to_dict())
    edit(data)
    return SitePlan.from_dict(data)


def _lines(text: str) -> int:
    return len(text.splitlines())


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_dataset_path_is_refused_before_exports_are_written(lab_plan: SitePlan, value: str) -> None:
    share = _share(lab_plan).name

    def edit(data: dict[str, Any]) -> None:
        next(d for d in data["datasets"] if d["storage"] == share)["path"] = value

    plan = _edited(lab_plan, edit)
    with pytest.raises(UnsafeValueError) as refused:
        render_storage(plan, _share(plan))
    assert "export path" in refused.value.message
    assert "\n" not in refused.value.message and "\x1b" not in refused.value.message


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_nfs_endpoint_is_refused_before_exports_are_written(lab_plan: SitePlan, value: str) -> None:
    share = _share(lab_plan).name

    def edit(data: dict[str, Any]) -> None:
        next(s for s in data["storage"] if s["name"] == share)["endpoint"] = "10.200.0.9:" + value

    plan = _edited(lab_plan, edit)
    with pytest.raises(UnsafeValueError):
        render_storage(plan, _share(plan))


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_endpoint_of_an_unexported_kind_stays_data_in_the_storage_document(
    ib_plan: SitePlan, value: str
) -> None:
    """A Lustre endpoint is not part of any export line: it is a YAML value, JSON-quoted, read back
    exactly, and the document has as many lines as with the benign endpoint."""
    benign = next(s for s in ib_plan.storage if s.kind == "lustre")
    [before] = render_storage(ib_plan, benign)

    def edit(data: dict[str, Any]) -> None:
        next(s for s in data["storage"] if s["name"] == benign.name)["endpoint"] = value

    plan = _edited(ib_plan, edit)
    store = next(s for s in plan.storage if s.name == benign.name)
    [after] = render_storage(plan, store)
    assert yaml.safe_load(after.content)["endpoint"] == value
    assert _lines(after.content) == _lines(before.content)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("tenant", "evil\nbad=0x7777, ipoib : ALL=full ;"),
        ("tenant", "{{ lookup('pipe', 'id') }}"),
        ("guid", "0x1=full ;\nt_x=0x7777 : ALL"),
        ("guid", "0xZZ"),
        ("host", "h\n# x"),
    ],
)
def test_partitions_conf_refuses_what_it_cannot_hold(ib_plan: SitePlan, where: str, value: str) -> None:
    compute = next(f for f in ib_plan.fabrics if f.kind == "infiniband")
    ports = [(h.name, i.name) for h in ib_plan.hosts for i in h.interfaces if i.fabric == compute.name]
    facts: dict = {"hosts": {}}
    for n, (host, interface) in enumerate(ports):
        facts["hosts"].setdefault(host, {"port_guids": {}})["port_guids"][interface] = f"0x{n + 1:016x}"
    first_host = ports[0][0]

    def edit(data: dict[str, Any]) -> None:
        if where == "tenant":
            data["tenants"][0]["name"] = value
        elif where == "host":
            next(h for h in data["hosts"] if h["name"] == first_host)["name"] = value

    plan = _edited(ib_plan, edit)
    if where == "guid":
        host, interface = ports[0]
        facts["hosts"][host]["port_guids"][interface] = value
    elif where == "host":
        facts["hosts"][value] = facts["hosts"].pop(first_host)
    keys = assign_pkeys([t.name for t in plan.tenants])
    with pytest.raises(UnsafeValueError):
        render_fabric(plan, compute, pkeys=keys, facts=facts)


def test_the_benign_plan_still_renders_every_artifact(ib_plan: SitePlan, lab_plan: SitePlan) -> None:
    """The same checks pass on the plans `aifactory plan` builds (no false refusals)."""
    keys = assign_pkeys([t.name for t in ib_plan.tenants])
    for plan in (ib_plan, lab_plan):
        for fabric in plan.fabrics:
            for artifact in render_fabric(plan, fabric, pkeys=keys):
                if artifact.name.endswith(".partitions.conf"):
                    parse_partitions_conf(artifact.content)
        for store in plan.storage:
            assert render_storage(plan, store)
