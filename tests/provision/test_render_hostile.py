"""Hostile strings in a plan built directly (validation bypassed) never reach exports(5),
partitions.conf or the YAML documents as lines of their own: each is refused with UnsafeValueError
naming the value, or written as data (JSON-quoted YAML, read back literally), and no artifact gets
a line more than with a benign value."""

from __future__ import annotations

import copy

import pytest
import yaml

from aifactory.errors import UnsafeValueError
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


def _share(plan: dict) -> dict:
    return next(s for s in plan["storage"] if s["kind"] == "nfs")


def _lines(text: str) -> int:
    return len(text.splitlines())


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_dataset_path_is_refused_before_exports_are_written(lab_plan: dict, value: str) -> None:
    plan = copy.deepcopy(lab_plan)
    dataset = next(d for d in plan["datasets"] if d["storage"] == _share(plan)["name"])
    dataset["path"] = value
    with pytest.raises(UnsafeValueError) as refused:
        render_storage(plan, _share(plan))
    assert "export path" in refused.value.message
    assert "\n" not in refused.value.message and "\x1b" not in refused.value.message


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_nfs_endpoint_is_refused_before_exports_are_written(lab_plan: dict, value: str) -> None:
    plan = copy.deepcopy(lab_plan)
    _share(plan)["endpoint"] = "10.200.0.9:" + value
    with pytest.raises(UnsafeValueError):
        render_storage(plan, _share(plan))


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_endpoint_of_an_unexported_kind_stays_data_in_the_storage_document(
    ib_plan: dict, value: str
) -> None:
    """A Lustre endpoint is not part of any export line: it is a YAML value, JSON-quoted, read back
    exactly, and the document has as many lines as with the benign endpoint."""
    benign = next(s for s in ib_plan["storage"] if s["kind"] == "lustre")
    [before] = render_storage(ib_plan, benign)
    plan = copy.deepcopy(ib_plan)
    store = next(s for s in plan["storage"] if s["name"] == benign["name"])
    store["endpoint"] = value
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
def test_partitions_conf_refuses_what_it_cannot_hold(ib_plan: dict, where: str, value: str) -> None:
    plan = copy.deepcopy(ib_plan)
    compute = next(f for f in plan["fabrics"] if f["kind"] == "infiniband")
    ports = [(h, i) for h in plan["hosts"] for i in h["interfaces"] if i["fabric"] == compute["name"]]
    facts: dict = {"hosts": {}}
    for n, (host, interface) in enumerate(ports):
        facts["hosts"].setdefault(host["name"], {"port_guids": {}})["port_guids"][interface["name"]] = (
            f"0x{n + 1:016x}"
        )
    if where == "tenant":
        plan["tenants"][0]["name"] = value
    elif where == "guid":
        host, interface = ports[0]
        facts["hosts"][host["name"]]["port_guids"][interface["name"]] = value
    else:
        ports[0][0]["name"] = value
    keys = assign_pkeys([t["name"] for t in plan["tenants"]])
    with pytest.raises(UnsafeValueError):
        render_fabric(plan, compute, pkeys=keys, facts=facts)


def test_the_benign_plan_still_renders_every_artifact(ib_plan: dict, lab_plan: dict) -> None:
    """The same checks pass on the plans `aifactory plan` builds (no false refusals)."""
    keys = assign_pkeys([t["name"] for t in ib_plan["tenants"]])
    for plan in (ib_plan, lab_plan):
        for fabric in plan["fabrics"]:
            for artifact in render_fabric(plan, fabric, pkeys=keys):
                if artifact.name.endswith(".partitions.conf"):
                    parse_partitions_conf(artifact.content)
        for store in plan["storage"]:
            assert render_storage(plan, store)
