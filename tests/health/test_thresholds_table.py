"""The threshold table: every number cites a document, its date and the quoted value; the lab's rows
come from a recorded baseline and are not zero; the rows a host gets follow its plan."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aifactory.errors import HealthError
from aifactory.health.thresholds import (
    OPS,
    load_table,
    profiles_for,
    table_path,
    table_problems,
    thresholds_for,
    tightened,
)
from aifactory.plan import plan_site
from aifactory.spec.model import HealthThreshold

REPO = Path(__file__).resolve().parents[2]
TABLE = load_table()
ROWS = [(name, check, row) for name, p in TABLE["profiles"].items() for check, row in p["thresholds"].items()]
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@pytest.mark.parametrize(("profile", "check", "row"), ROWS, ids=[f"{p}:{c}" for p, c, _ in ROWS])
def test_every_threshold_cites_document_date_and_quote(profile: str, check: str, row: dict) -> None:
    source = row.get("source", {})
    assert isinstance(source.get("document"), str) and source["document"].strip(), (profile, check)
    assert isinstance(source.get("date"), str) and DATE.match(source["date"]), (profile, check)
    assert isinstance(source.get("quote"), str) and len(source["quote"].strip()) > 5, (profile, check)
    assert isinstance(row.get("derivation"), str) and row["derivation"].strip(), (profile, check)
    assert row["op"] in OPS and isinstance(row["value"], int | float), (profile, check)


def test_the_table_has_no_row_without_its_source() -> None:
    assert table_problems(TABLE) == []


@pytest.mark.parametrize("key", ["document", "date", "quote"])
def test_a_row_without_its_source_is_refused(tmp_path: Path, key: str) -> None:
    table = json.loads(table_path().read_text())
    del table["profiles"]["gpu/h200-sxm"]["thresholds"]["gpu-power-limit"]["source"][key]
    broken = tmp_path / "t.json"
    broken.write_text(json.dumps(table))
    assert table_problems(table) == [
        f"profiles.gpu/h200-sxm.thresholds.gpu-power-limit: source.{key} is missing"
    ] + (
        ["profiles.gpu/h200-sxm.thresholds.gpu-power-limit: source.date is not YYYY-MM-DD"]
        if key == "date"
        else []
    )
    with pytest.raises(HealthError, match="without a cited source"):
        load_table(broken)


def test_lab_rows_come_from_a_recorded_baseline_and_are_not_zero() -> None:
    lab_profiles = [name for name, p in TABLE["profiles"].items() if p.get("baseline") == "lab"]
    assert sorted(lab_profiles) == ["fabric/ethernet-unrated", "storage"]
    baseline = TABLE["baselines"]["lab"]
    assert baseline["measured_on"] and baseline["how"] and baseline["values"]
    for name in lab_profiles:
        for check, row in TABLE["profiles"][name]["thresholds"].items():
            assert row["value"] > 0, (name, check)
            measured = baseline["values"][check]
            lowest = min(measured) if isinstance(measured, list) else measured
            assert row["value"] < lowest, f"{check}: the threshold must sit below every baseline measurement"
            fault = baseline["values"].get(f"{check}-tbf-20mbit")
            if fault is not None:  # the injected fault crosses it
                assert max(fault if isinstance(fault, list) else [fault]) < row["value"], check


def test_gpu_and_fabric_profiles_the_issue_names_exist() -> None:
    assert {
        "gpu/h100-sxm",
        "gpu/h200-sxm",
        "fabric/infiniband-ndr",
        "fabric/roce-400g",
        "fabric/ethernet",
    } <= set(TABLE["profiles"])


def test_rows_follow_the_plan_national_site() -> None:
    plan = plan_site(REPO / "inventory" / "examples" / "national" / "site.yaml", write_lock=False).plan
    h100 = next(h for h in plan.hosts if h.gpus and "H100" in h.gpus.model)
    h200 = next(h for h in plan.hosts if h.gpus and "H200" in h.gpus.model)
    assert profiles_for(plan, h100, TABLE) == ["host", "storage", "gpu/h100-sxm", "fabric/infiniband-ndr"]
    assert profiles_for(plan, h200, TABLE) == ["host", "storage", "gpu/h200-sxm", "fabric/infiniband-ndr"]
    rows = thresholds_for(plan, h100, TABLE)
    assert rows["gpu-count"].value == h100.gpus.count and rows["gpu-power-limit"].value == 700
    assert rows["tcp-bandwidth"].profile == "fabric/infiniband-ndr"


def test_rows_follow_the_plan_lab_site() -> None:
    plan = plan_site(REPO / "inventory" / "lab" / "site.yaml", write_lock=False).plan
    cpu = next(h for h in plan.hosts if h.role == "cpu")
    control = next(h for h in plan.hosts if h.role == "control")
    assert profiles_for(plan, cpu, TABLE) == ["host", "storage", "fabric/ethernet-unrated"]
    assert profiles_for(plan, control, TABLE) == ["host", "storage"]
    assert thresholds_for(plan, cpu, TABLE)["tcp-bandwidth"].value == 0.1


def _lab_cpu_rows() -> tuple[object, object]:
    plan = plan_site(REPO / "inventory" / "lab" / "site.yaml", write_lock=False).plan
    cpu = next(h for h in plan.hosts if h.role == "cpu")
    return cpu, thresholds_for(plan, cpu, TABLE)


def test_the_spec_tightens_a_pools_threshold() -> None:
    cpu, rows = _lab_cpu_rows()
    wanted = [
        HealthThreshold(pool="cpu", check="tcp-bandwidth", value=0.5),
        HealthThreshold(pool="cpu", check="clock-offset", value=0.1),
    ]
    other = [HealthThreshold(pool="control", check="disk-free", value=50)]
    result = tightened(rows, cpu.pool, wanted + other)
    assert (result["tcp-bandwidth"].value, result["tcp-bandwidth"].profile) == (0.5, "spec")
    assert (result["clock-offset"].op, result["clock-offset"].value) == ("<=", 0.1)
    assert result["disk-free"] == rows["disk-free"]  # another pool's row is not this pool's


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        ("tcp-bandwidth", 0.05, r"would loosen the table's >= 0.1 Gbit/s \(fabric/ethernet-unrated\)"),
        ("clock-offset", 5, r"would loosen the table's <= 1 s \(host\)"),
        ("gpu-xid-events", 0, "nothing to tighten"),
    ],
)
def test_the_spec_never_loosens_a_threshold(check: str, value: float, message: str) -> None:
    cpu, rows = _lab_cpu_rows()
    with pytest.raises(HealthError, match=message) as refused:
        tightened(rows, cpu.pool, [HealthThreshold(pool="cpu", check=check, value=value)])
    assert refused.value.location.path == "health.thresholds[0]"
