"""The plan: deterministic bytes, stable names and addresses, the allocation lock, --diff."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from plan_sites import NATIONAL, site_text

from aifactory.errors import SpecError
from aifactory.plan import plan_site
from aifactory.plan.addressing import lock_path_for


def _identity(plan_dict: dict) -> dict[str, dict]:
    """Each host's name -> everything that must never move: addresses per fabric rail and BMC."""
    return {
        h["name"]: {
            "interfaces": [(i["fabric"], i["rail"], i["name"], i["address"]) for i in h["interfaces"]],
            "bmc": h["bmc"],
            "management": h["management_address"],
        }
        for h in plan_dict["hosts"]
    }


def _plan(spec: Path, text: str) -> dict:
    spec.write_text(text)
    return plan_site(spec).plan.to_dict()


def test_plan_bytes_are_identical_across_runs_and_hash_seeds(tmp_path: Path, aifactory) -> None:
    spec = tmp_path / "site.yaml"
    shutil.copy(NATIONAL, spec)
    shutil.copy(lock_path_for(NATIONAL), lock_path_for(spec))
    outputs = []
    for seed in ("0", "4242"):
        out = tmp_path / f"plan-{seed}.json"
        result = aifactory("plan", str(spec), "-o", str(out), "--frozen", env={"PYTHONHASHSEED": seed})
        assert result.returncode == 0, result.stderr
        outputs.append(out.read_bytes())
    assert all(o == outputs[0] for o in outputs)
    assert outputs[0] == plan_site(spec, write_lock=False).plan.to_json().encode()
    assert json.loads(outputs[0])["summary"]["gpus"] == 9216


def test_growing_a_pool_keeps_every_existing_host(tmp_path: Path) -> None:
    spec = tmp_path / "site.yaml"
    before = _identity(_plan(spec, site_text([("train", 3), ("infer", 2)])))
    after = _identity(_plan(spec, site_text([("train", 7), ("infer", 2)])))
    assert {name: after[name] for name in before} == before
    assert sorted(set(after) - set(before)) == [f"grow-train-{i:03d}" for i in range(4, 8)]
    new_addresses = {i[3] for name in set(after) - set(before) for i in after[name]["interfaces"]}
    old_addresses = {i[3] for host in before.values() for i in host["interfaces"]}
    assert not new_addresses & old_addresses


def test_adding_a_pool_before_an_existing_one_keeps_every_existing_host(tmp_path: Path) -> None:
    spec = tmp_path / "site.yaml"
    before = _identity(_plan(spec, site_text([("train", 3), ("infer", 2)])))
    after = _identity(_plan(spec, site_text([("first", 5), ("train", 3), ("infer", 2)])))
    assert {name: after[name] for name in before} == before
    assert len(after) == len(before) + 5


def test_without_the_lock_the_same_change_would_renumber(tmp_path: Path) -> None:
    """Why the lock exists: planned from scratch, a pool added first takes the first addresses."""
    spec = tmp_path / "site.yaml"
    before = _identity(_plan(spec, site_text([("train", 3)])))
    lock_path_for(spec).unlink()
    after = _identity(_plan(spec, site_text([("first", 2), ("train", 3)])))
    assert after["grow-train-001"] != before["grow-train-001"]


def test_shrinking_then_growing_back_restores_the_same_addresses(tmp_path: Path) -> None:
    spec = tmp_path / "site.yaml"
    full = _identity(_plan(spec, site_text([("train", 6), ("infer", 2)])))
    _plan(spec, site_text([("train", 2), ("infer", 2), ("later", 3)]))
    again = _identity(_plan(spec, site_text([("train", 6), ("infer", 2), ("later", 3)])))
    assert {name: again[name] for name in full} == full


def test_widening_a_full_fabric_keeps_every_address(tmp_path: Path) -> None:
    """A /22 compute fabric holds 255 hosts x 4 rails; the fix for more is a wider prefix, not renumbering."""
    spec = tmp_path / "site.yaml"
    before = _identity(_plan(spec, site_text([("train", 200), ("infer", 50)], mgmt_cidr="10.10.0.0/22")))
    spec.write_text(site_text([("train", 200), ("infer", 100)], mgmt_cidr="10.10.0.0/22"))
    with pytest.raises(SpecError) as full:
        plan_site(spec)
    problems = [(p.code, p.location.path) for p in full.value.problems]
    assert problems == [("fabric-too-small", "fabrics[1].cidr")]
    wider = site_text([("train", 200), ("infer", 100)], compute_cidr="10.20.0.0/21", mgmt_cidr="10.10.0.0/22")
    after = _identity(_plan(spec, wider))
    assert {name: after[name] for name in before} == before
    assert len(after) == 300


def test_names_grow_past_999_without_repadding(tmp_path: Path) -> None:
    spec = tmp_path / "site.yaml"
    text = site_text([("big", 1001)], compute_cidr="10.20.0.0/20", mgmt_cidr="10.10.0.0/21")
    names = [h["name"] for h in _plan(spec, text)["hosts"]]
    assert names[0] == "grow-big-001" and names[998] == "grow-big-999" and names[1000] == "grow-big-1001"


def test_first_usable_address_is_the_gateway_and_rails_follow(tmp_path: Path) -> None:
    spec = tmp_path / "site.yaml"
    plan = _plan(spec, site_text([("train", 2)]))
    compute = next(f for f in plan["fabrics"] if f["name"] == "compute")
    assert compute["gateway"] == "10.20.0.1"
    first = plan["hosts"][0]
    rails = [(i["name"], i["address"]) for i in first["interfaces"] if i["fabric"] == "compute"]
    assert rails == [
        ("compute0", "10.20.0.2"),
        ("compute1", "10.20.0.3"),
        ("compute2", "10.20.0.4"),
        ("compute3", "10.20.0.5"),
    ]
    assert first["bmc"]["address"] == "fd00:9::2"
    assert first["bmc"]["credentials"] == "secret://bmc/grow-train-001"
    assert first["nccl"]["NCCL_IB_GID_INDEX"] == "3"
    assert plan["hosts"][1]["management_address"] == "10.10.0.3"


def test_frozen_plan_refuses_a_spec_the_lock_does_not_cover(tmp_path: Path, aifactory) -> None:
    spec = tmp_path / "site.yaml"
    _plan(spec, site_text([("train", 2)]))
    spec.write_text(site_text([("train", 3)]))
    lock_before = lock_path_for(spec).read_text()
    result = aifactory("plan", str(spec), "--frozen")
    assert result.returncode == 1
    assert "does not cover this spec" in result.stderr
    assert lock_path_for(spec).read_text() == lock_before


@pytest.mark.parametrize(
    "damage", ["{not json", '{"schema": "other/v9"}', '{"schema": "aifactory.alloc/v1"}']
)
def test_a_damaged_lock_is_an_error_not_a_renumbering(tmp_path: Path, damage: str) -> None:
    spec = tmp_path / "site.yaml"
    spec.write_text(site_text([("train", 2)]))
    lock_path_for(spec).write_text(damage)
    with pytest.raises(SpecError, match="allocation lock file is damaged"):
        plan_site(spec)


def test_plan_diff_shows_added_removed_and_changed(tmp_path: Path, aifactory) -> None:
    spec = tmp_path / "site.yaml"
    old = tmp_path / "old.json"
    spec.write_text(site_text([("train", 3), ("infer", 2)]))
    assert aifactory("plan", str(spec), "-o", str(old)).returncode == 0

    spec.write_text(site_text([("train", 5), ("infer", 1)]))
    grown = aifactory("plan", str(spec), "--diff", str(old))
    assert grown.returncode == 0, grown.stderr
    assert grown.stdout.splitlines() == [
        "+ grow-train-004",
        "+ grow-train-005",
        "- grow-infer-002",
        "2 added, 1 removed, 0 changed",
    ]

    spec.write_text(site_text([("train", 3), ("infer", 2)], compute_cidr="10.30.0.0/22"))
    moved = aifactory("plan", str(spec), "--diff", str(old), "--format", "json")
    diff = json.loads(moved.stdout)
    assert diff["added"] == [] and diff["removed"] == []
    assert sorted(diff["changed"]) == [
        "grow-infer-001",
        "grow-infer-002",
        "grow-train-001",
        "grow-train-002",
        "grow-train-003",
    ]
    assert "compute[0]: 10.20.0.2 -> 10.30.0.2" in diff["changed"]["grow-train-001"]

    spec.write_text(site_text([("train", 3), ("infer", 2)]))
    same = aifactory("plan", str(spec), "--diff", str(old))
    assert same.stdout.strip() == "no host or address changes"


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        ("[not a plan", "cannot read the old plan"),
        ("[]", "is not a plan written by `aifactory plan -o`"),
        ('{"schema": "aifactory.plan/v1", "hosts": [{"addr": 1}]}', "is not a plan"),
    ],
)
def test_plan_diff_with_an_unreadable_old_plan_is_a_usage_error(
    content: str, phrase: str, tmp_path: Path, cli_main
) -> None:
    spec = tmp_path / "site.yaml"
    spec.write_text(site_text([("train", 1)]))
    (tmp_path / "old.json").write_text(content)
    code, _, err = cli_main("plan", str(spec), "--diff", str(tmp_path / "old.json"))
    assert code == 2 and phrase in err and "Traceback" not in err
