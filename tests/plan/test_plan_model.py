"""The typed plan: the same spec gives the same plan bytes as before the sections were typed, and a
serialized plan reads back into an equal plan (the bundle signs plan.json; nodes load it)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aifactory.plan import plan_site
from aifactory.plan.model import PlanFormatError, SitePlan

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "inventory" / "lab" / "site.yaml"
NATIONAL = ROOT / "inventory" / "examples" / "national" / "site.yaml"

# sha256 of to_json() for each example site (with its committed allocation lock), computed on main at
# 304d29a, before the sections were typed (they were plain dicts then), each with its spec's digest:
# when an example spec changes, its plan may change too, and this test says so instead of comparing
# (recompute both digests then, with the plan as it was before the spec change, and check they match).
# The lab's spec gained a contacts section, then an economics section, then a loop with its held-out
# dataset since (its golden pair is now the plan with all three); without the newer sections it still
# gives the pairs it gave before them: without any, the pair computed at 304d29a.
LAB_BEFORE_CONTACTS = (
    "sha256:b37bb4c8ad66475e2f02ec1e91d9c3266860423de8eeb3f0d48e2ce008bf3989",
    "sha256:1132971f13f2e966feaf9a68e866e45746c280b926df03662000d00d8fac70d4",
)
LAB_BEFORE_ECONOMICS = (
    "sha256:8999324f1559e82824fe2114cd2513135c0e436bba965531e68afe4c623aa50b",
    "sha256:b64da6cb79689881ec5c4355062886fd1c9f5377aa5b44bc54656719e6e91f5d",
)
LAB_BEFORE_LOOP = (
    "sha256:2fa92ae86e5121bf526ac7cde268aa411171a2233d245f4b13f798040e4b4b14",
    "sha256:36d1ac3f3890194662e4adcb7cf3cef1bfee48832e1d725233bee96797ec7426",
)
LAB_HELD_OUT = "vitals-holdout"  # the loop's evaluation dataset, added with the loop
GOLDEN = {
    LAB: (
        "sha256:56bc64d4aff7e676489d0e6c1e99f5855481152c651c0107eedb523a4d264edb",
        "sha256:19efb5db296ade0378d6e7c5bcd7a92010dbc02bf4d647f02cde74085d6889b8",
    ),
    NATIONAL: (
        "sha256:c76cf4034d924167e34442687c46f15e3c70a075b11d03fc104ca65d9b37b990",
        "sha256:87da3e6cb51ec991b8f94ade9f8e5b73640683dfc73c4f4ab0308487e5824dc4",
    ),
}


@pytest.fixture(scope="module", params=[LAB, NATIONAL], ids=["lab", "national"])
def site(request: pytest.FixtureRequest) -> tuple[Path, SitePlan]:
    path: Path = request.param
    return path, plan_site(path, write_lock=False).plan


def test_typed_plan_keeps_the_bytes_of_the_dict_plan(site: tuple[Path, SitePlan]) -> None:
    path, plan = site
    golden_digest, golden_spec = GOLDEN[path]
    assert plan.spec_digest == golden_spec, f"{path} changed since the golden digest: recompute it"
    assert "sha256:" + hashlib.sha256(plan.to_json().encode()).hexdigest() == golden_digest
    assert plan.digest() == golden_digest


def _lab_without(tmp_path: Path, *sections: str) -> SitePlan:
    """The lab's plan from its spec less the named top-level sections (each key and its indented
    lines) and less the loop with its held-out dataset (newer than every pair kept here), with the
    lab's allocation lock."""
    kept, skipping, held_out = [], False, False
    for line in LAB.read_text().splitlines(keepends=True):
        if not line.startswith((" ", "#")):
            skipping, held_out = line.split(":", 1)[0] in (*sections, "loop"), False
        if line.startswith("  - "):  # an entry of a list section: the held-out dataset's is left out
            held_out = line.split("#", 1)[0].strip() == f"- name: {LAB_HELD_OUT}"
        if not skipping and not held_out:
            kept.append(line)
    spec = tmp_path / "site.yaml"
    spec.write_text("".join(kept))
    (tmp_path / "site.alloc.json").write_text((LAB.parent / "site.alloc.json").read_text())
    return plan_site(spec, write_lock=False).plan


def test_a_spec_without_contacts_keeps_the_digests_it_had_before_the_section(tmp_path: Path) -> None:
    """contacts (added in v1) enters the spec digest and the plan only when a spec sets it (the lab's
    economics section, newer, is left out too: the pair is from before both)."""
    plan = _lab_without(tmp_path, "contacts", "economics")
    assert plan.contacts is None and "contacts" not in plan.to_dict()
    assert (plan.digest(), plan.spec_digest) == LAB_BEFORE_CONTACTS
    with_it = plan_site(LAB, write_lock=False).plan
    assert with_it.to_dict()["contacts"] == {"security": "soc@lab.example"}


def test_a_spec_without_the_loop_keeps_the_digests_it_had_before_it(tmp_path: Path) -> None:
    """The loop section (and the dataset it holds out) enter the spec digest and the plan only when a
    spec sets them."""
    plan = _lab_without(tmp_path)
    assert "loop" not in plan.to_dict() and LAB_HELD_OUT not in {d.name for d in plan.datasets}
    assert (plan.digest(), plan.spec_digest) == LAB_BEFORE_LOOP
    with_it = plan_site(LAB, write_lock=False).plan
    assert [entry.model for entry in with_it.loop or ()] == ["vitals-mlp"]


def test_a_spec_without_economics_keeps_the_digests_it_had_before_the_section(tmp_path: Path) -> None:
    """economics (added in v1) enters the spec digest and the plan only when a spec sets it."""
    plan = _lab_without(tmp_path, "economics")
    assert "economics" not in plan.to_dict()
    assert (plan.digest(), plan.spec_digest) == LAB_BEFORE_ECONOMICS
    assert plan_site(LAB, write_lock=False).plan.to_dict()["economics"]["currency"] == "EUR"


def test_a_plan_reads_back_equal(site: tuple[Path, SitePlan]) -> None:
    _, plan = site
    assert SitePlan.from_dict(plan.to_dict()) == plan
    again = SitePlan.from_dict(json.loads(plan.to_json()))
    assert again == plan
    assert again.to_json() == plan.to_json()


def test_load_reads_plan_json(tmp_path: Path, site: tuple[Path, SitePlan]) -> None:
    _, plan = site
    written = tmp_path / "plan.json"
    written.write_text(plan.to_json())
    loaded = SitePlan.load(written)
    assert loaded == plan
    assert loaded.digest() == plan.digest()
    assert loaded.pools[0].platform.arch == plan.pools[0].platform.arch


def _lab_dict() -> dict[str, Any]:
    return plan_site(LAB, write_lock=False).plan.to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p["pools"][0].pop("role"), "plan field pools[0]: missing role"),
        (lambda p: p["tenants"][0].update(rank=1), "plan field tenants[0]: unknown rank"),
        (lambda p: p["fabrics"][0].update(rails="4"), "plan field fabrics[0].rails: expected int, got str"),
        (lambda p: p["fabrics"][0].update(rails=True), "plan field fabrics[0].rails: expected int, got bool"),
        (lambda p: p["site"].update(air_gapped="yes"), "plan field site.air_gapped: expected bool"),
        (lambda p: p["models"][0].update(serve_on="gpu"), "plan field models[0].serve_on: expected a list"),
        (lambda p: p["egress"].update(allow=[{"name": "x"}]), "plan field egress.allow[0]: missing"),
        (lambda p: p["hosts"][0].pop("pool"), "plan field hosts[0]: not a host"),
        (lambda p: p["hosts"][0]["interfaces"][0].update(vlan=1), "plan field hosts[0]:"),
        (lambda p: p["summary"].update(hosts=99), "plan field summary: does not match"),
        (lambda p: p.update(extra={}), "unknown ['extra']"),
        (lambda p: p.update(schema="aifactory.plan/v2"), "not an aifactory site plan"),
    ],
)
def test_a_malformed_plan_is_refused_naming_the_field(change: Any, message: str) -> None:
    data = _lab_dict()
    change(data)
    with pytest.raises(PlanFormatError) as caught:
        SitePlan.from_dict(data)
    assert message in caught.value.message


def test_load_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text('{"schema": "aifactory.plan/v1"}')
    with pytest.raises(PlanFormatError) as caught:
        SitePlan.load(bad)
    assert str(bad) in caught.value.message
    assert caught.value.location.file == str(bad)
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(PlanFormatError, match="cannot read the site plan"):
        SitePlan.load(tmp_path / "junk.json")


def test_loading_a_plan_needs_only_the_standard_library(tmp_path: Path) -> None:
    """Nodes read the bundle's plan.json with these types: no pydantic, YAML or plan builder."""
    written = tmp_path / "plan.json"
    written.write_text(plan_site(LAB, write_lock=False).plan.to_json())
    probe = (
        "import sys\n"
        "from aifactory.runtime.siteplan import RuntimePlan\n"
        f"plan = RuntimePlan.load({str(written)!r})\n"
        "assert plan.plan.pools, 'no pools'\n"
        "third = sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'yaml', 'jinja2'))\n"
        "ours = sorted(m for m in sys.modules if m.startswith(('aifactory.spec', 'aifactory.plan.build')))\n"
        "print(third + ours)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
