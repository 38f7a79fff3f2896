"""Fabric and storage artifacts: deterministic, and valid in their own formats."""

from __future__ import annotations

import re

import pytest
import yaml

from aifactory.errors import ProvisionError
from aifactory.plan.model import FabricPlan, SitePlan
from aifactory.provision.partitions import (
    DEFAULT_PKEY,
    assign_pkeys,
    candidate_pkey,
    parse_partitions_conf,
    read_registry,
    write_registry,
)
from aifactory.provision.render import render_fabric, render_storage

EXPORT_LINE = re.compile(r"^(/\S*)((?:\s+[0-9a-fA-F.:]+\([a-z_=,]+\))+)$")


def fabric(plan: SitePlan, name: str) -> FabricPlan:
    return plan.fabric(name)


def guids_for(plan: SitePlan, fabric_name: str) -> dict:
    hosts: dict = {}
    for n, host in enumerate(plan.hosts):
        for i in host.interfaces:
            if i.fabric == fabric_name:
                guid = f"0x0002c903{n:04x}{i.rail:04x}"
                hosts.setdefault(host.name, {"port_guids": {}})["port_guids"][i.name] = guid
    return {"schema": "aifactory.fabric-facts/v1", "hosts": hosts}


def test_partitions_conf_parses_with_one_partition_per_tenant(ib_plan):
    keys = assign_pkeys([t.name for t in ib_plan.tenants])
    facts = guids_for(ib_plan, "compute")
    [artifact] = render_fabric(ib_plan, fabric(ib_plan, "compute"), pkeys=keys, facts=facts)
    assert artifact.complete and "INCOMPLETE" not in artifact.content
    parts = {p.name: p for p in parse_partitions_conf(artifact.content)}
    assert parts["Default"].pkey == DEFAULT_PKEY
    assert ("ALL_CAS", "limited") in parts["Default"].members
    # health runs only on the gpu pool (2 hosts x 2 rails); research on every pool (3 x 2)
    assert len(parts["t_health"].members) == 4 and len(parts["t_research"].members) == 6
    assert parts["t_health"].pkey == keys["health"]
    assert all(m == "full" for _, m in parts["t_research"].members)
    assert len({p.pkey for p in parts.values()}) == len(parts)


def test_partitions_conf_without_facts_says_it_is_incomplete(ib_plan):
    keys = assign_pkeys([t.name for t in ib_plan.tenants])
    [artifact] = render_fabric(ib_plan, fabric(ib_plan, "compute"), pkeys=keys, facts={})
    assert not artifact.complete
    assert "# INCOMPLETE: no port GUID known for 6 port(s)" in artifact.content
    assert all(p.members == () for p in parse_partitions_conf(artifact.content) if p.name != "Default")


def test_rendering_is_deterministic(ib_plan):
    keys = assign_pkeys([t.name for t in ib_plan.tenants])
    first = [a.content for f in ib_plan.fabrics for a in render_fabric(ib_plan, f, pkeys=keys)]
    first += [a.content for s in ib_plan.storage for a in render_storage(ib_plan, s)]
    again = SitePlan.from_dict(ib_plan.to_dict())  # the same plan, read back from its JSON form
    second = [a.content for f in again.fabrics for a in render_fabric(again, f, pkeys=dict(keys))]
    second += [a.content for s in again.storage for a in render_storage(again, s)]
    assert first == second


def test_partition_keys_stay_when_tenants_are_added(tmp_path):
    before = assign_pkeys(["health", "research"])
    registry = tmp_path / "pkeys.json"
    write_registry(registry, before)
    after = assign_pkeys(["aaa-first", "health", "research", "zzz-last"], read_registry(registry))
    assert {t: after[t] for t in before} == before
    assert len(set(after.values())) == 4 and all(0 < k < DEFAULT_PKEY for k in after.values())


def test_a_colliding_new_tenant_moves_to_the_next_free_key():
    held = {"health": candidate_pkey("newcomer")}  # the newcomer's own key is taken
    keys = assign_pkeys(["health", "newcomer"], held)
    assert keys["health"] == held["health"] and keys["newcomer"] == held["health"] + 1


def test_a_damaged_registry_is_refused(tmp_path):
    registry = tmp_path / "pkeys.json"
    registry.write_text('{"schema": "something-else"}')
    with pytest.raises(ProvisionError) as caught:
        read_registry(registry)
    assert caught.value.code == "pkey-registry"


@pytest.mark.parametrize(
    "text",
    [
        "Default=0x7fff : ALL=full",  # no terminating ';'
        "t_a=0x0001, ipoib : 0xZZ=full ;",  # not a GUID
        "t_a=0x0001 : ALL=full ;\nt_b=0x0001 : ALL=full ;",  # duplicate pkey
        "t-a=0x0001 : ALL=full ;",  # bad name
        "t_a=0x0001, colour=blue : ALL ;",  # unknown flag
    ],
)
def test_the_partitions_reader_is_strict(text):
    with pytest.raises(ValueError):
        parse_partitions_conf(text)


def test_roce_and_ethernet_documents(ib_plan, lab_plan):
    [roce] = render_fabric(ib_plan, fabric(ib_plan, "storage"), pkeys={})
    doc = yaml.safe_load(roce.content)
    assert doc["schema"] == "aifactory.fabric/v1" and doc["kind"] == "roce"
    assert (doc["vlan"], doc["vlan_source"], doc["mtu"], doc["mtu_source"]) == (130, "plan", 9000, "plan")
    assert doc["qos"]["pfc"] == {"enabled": True, "priorities": [3]}
    assert doc["qos"]["ecn"]["enabled"] is True and doc["qos"]["dscp"] == {"cnp": 48, "roce": 26}
    assert len(doc["ports"]) == 3
    [mgmt] = render_fabric(lab_plan, fabric(lab_plan, "mgmt"), pkeys={})
    plain = yaml.safe_load(mgmt.content)
    assert (plain["vlan"], plain["mtu"], plain["mtu_source"]) == (None, 1500, "default")
    assert plain["qos"]["pfc"]["enabled"] is False
    assert [p["address"] for p in plain["ports"]] == [h.management_address for h in lab_plan.hosts]


def test_storage_documents_name_owner_encryption_and_replicas(ib_plan):
    lake_plan = next(s for s in ib_plan.storage if s.name == "lake")
    [lake] = render_storage(ib_plan, lake_plan)
    doc = yaml.safe_load(lake.content)
    assert doc["section"] == "filesets" and doc["encrypted_at_rest"] is True
    assert doc["replicas"] == [
        {"country": "NG", "encrypted_at_rest": True, "kind": "ceph", "storage": "lake-dr"}
    ]
    records = {e["name"]: e for e in doc["filesets"]}
    patient = records["patient-records"]
    assert (patient["owner"], patient["classification"]) == ("health", "secret")
    assert patient["encryption_required"] is True
    # health runs on gpu; research (a grantee) on every pool: both pools may mount it
    assert patient["client_pools"] == ["cpu", "gpu"]
    assert patient["export_path"] == "/lake/health/patient-records"
    assert records["open-corpus"]["encryption_required"] is False
    dr_plan = next(s for s in ib_plan.storage if s.name == "lake-dr")
    dr = yaml.safe_load(render_storage(ib_plan, dr_plan)[0].content)
    assert dr["replica_of"] == ["lake"] and dr["subvolumes"] == []


def test_nfs_exports_follow_exports_5(lab_plan):
    share = next(s for s in lab_plan.storage if s.name == "share")
    artifacts = {a.name: a for a in render_storage(lab_plan, share)}
    lines = [ln for ln in artifacts["share.exports"].content.splitlines() if ln and not ln.startswith("#")]
    on_share = [d.path for d in lab_plan.datasets if d.storage == "share"]
    on_share += [m.path for m in lab_plan.models if m.storage == "share"]
    assert len(lines) == len(on_share) == 3  # vitals, the loop's held-out vitals-holdout, the model
    for line in lines:
        match = EXPORT_LINE.match(line)
        assert match, line
        clients = re.findall(r"([0-9.]+)\(([^)]*)\)", match.group(2))
        assert {c for c, _ in clients} == {"10.200.0.2", "10.200.0.3", "10.200.0.4"}
        assert all("root_squash" in opts.split(",") and "sync" in opts.split(",") for _, opts in clients)
