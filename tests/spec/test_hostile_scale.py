"""A few KB of YAML aliases expand to thousands of identical items: validation stays near-linear
and lists at most 200 problems plus a count of the rest. Not a timing test: the 20 s timeout only
keeps a quadratic regression (minutes, gigabytes) from hanging the suite; benchmarks/plan_bench.py
measures the time and memory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aifactory.spec.validate import MAX_PROBLEMS

HEADER = """\
schema: aifactory.site/v1
site: {name: hostile, jurisdiction: NG, air_gapped: true}
datacenters: [{name: dc1, country: NG, region: NG-FC}]
node_pools: [{name: ctl, role: control, count: 1, datacenter: dc1, fabrics: [mgmt]}]
storage: [{name: lake, kind: nfs, datacenter: dc1, capacity_tib: 1, encrypted_at_rest: true,
           mount_path: /lake}]
tenants: [{name: t, clearance: secret}]
"""
DATASET = "&d {name: d, owner: t, classification: internal, residency: NG, storage: lake, path: /data/d}"
FABRIC = "&f {name: f, kind: ethernet, purpose: compute, cidr: 10.1.0.0/16}"
MGMT = "{name: mgmt, kind: ethernet, purpose: management, cidr: 10.0.0.0/24}"


def aliased(section: str, count: int) -> str:
    if section == "datasets":
        items = ", ".join([DATASET] + ["*d"] * (count - 1))
        return HEADER + f"fabrics: [{MGMT}]\ndatasets: [{items}]\n"
    items = ", ".join([MGMT, FABRIC] + ["*f"] * (count - 1))
    return HEADER + f"fabrics: [{items}]\n"


def validate(spec: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from aifactory.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "validate", str(spec), *extra],
        capture_output=True,
        text=True,
        env={**os.environ, "AIFACTORY_STATE_HOME": str(spec.parent / "state")},
        timeout=20,
        check=False,
    )


@pytest.mark.parametrize(("section", "count"), [("datasets", 4000), ("fabrics", 250)])
def test_aliased_lists_list_at_most_200_problems_and_count_the_rest(
    tmp_path: Path, section: str, count: int
) -> None:
    spec = tmp_path / "site.yaml"
    spec.write_text(aliased(section, count))
    assert len(spec.read_bytes()) < 20_000
    done = validate(spec)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    counted = re.search(r"(\d+) problem\(s\) in the site spec", done.stderr)
    assert counted, done.stderr
    total = int(counted.group(1))
    listed = [line for line in done.stderr.splitlines() if line.startswith("  - ")]
    assert total > MAX_PROBLEMS and len(listed) == MAX_PROBLEMS
    assert done.stderr.rstrip().endswith(f"  ... and {total - MAX_PROBLEMS} more problems")
    # every item after the first is a duplicate name, and each is reported once, not once per pair
    assert count - 1 <= total < 3 * count
    as_json = json.loads(validate(spec, "--format", "json").stdout)["error"]
    assert len(as_json["problems"]) == MAX_PROBLEMS
    assert as_json["omitted_problems"] == total - MAX_PROBLEMS


def test_1000_aliased_fabrics_are_over_the_list_limit(tmp_path: Path) -> None:
    spec = tmp_path / "site.yaml"
    spec.write_text(aliased("fabrics", 1000))
    done = validate(spec)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "fabrics: 1001 items; at most 256 are allowed here" in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("  - ")]) == 1


def test_each_overlap_and_nesting_is_reported_once_against_a_real_partner(tmp_path: Path) -> None:
    spec = tmp_path / "site.yaml"
    datasets = [
        "{name: a, owner: t, classification: internal, residency: NG, storage: lake, path: /data/a/deep}",
        "{name: b, owner: t, classification: internal, residency: NG, storage: lake, path: /data}",
        "{name: c, owner: t, classification: internal, residency: NG, storage: lake, path: /data/a}",
        "{name: e, owner: t, classification: internal, residency: NG, storage: lake, path: /database}",
        "{name: g, owner: t, classification: internal, residency: NG, storage: lake, path: /data}",
    ]
    fabrics = [
        MGMT,
        "{name: x, kind: ethernet, purpose: compute, cidr: 10.1.2.0/24}",
        "{name: y, kind: ethernet, purpose: compute, cidr: 10.1.0.0/16}",
        "{name: z, kind: ethernet, purpose: storage, cidr: 10.2.0.0/16}",
        "{name: w, kind: ethernet, purpose: storage, cidr: 10.0.0.128/25}",
    ]
    spec.write_text(HEADER + f"fabrics: [{', '.join(fabrics)}]\ndatasets: [{', '.join(datasets)}]\n")
    done = validate(spec, "--format", "json")
    found = sorted(
        (p["path"], p["message"])
        for p in json.loads(done.stdout)["error"]["problems"]
        if p["code"] in ("nested-dataset", "overlapping-cidr")
    )
    assert found == [
        ("datasets[0].path", "'/data/a/deep' is inside datasets[2]'s path '/data/a' on storage 'lake'"),
        ("datasets[2].path", "'/data/a' is inside datasets[1]'s path '/data' on storage 'lake'"),
        ("datasets[4].path", "'/data' is inside datasets[1]'s path '/data' on storage 'lake'"),
        ("fabrics[2].cidr", "10.1.0.0/16 overlaps fabrics[1] (10.1.2.0/24)"),
        ("fabrics[4].cidr", "10.0.0.128/25 overlaps fabrics[0] (10.0.0.0/24)"),
    ]
