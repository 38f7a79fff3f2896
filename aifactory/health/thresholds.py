"""The threshold table and the rows that apply to one host.

Every host gets the `host` profile; a GPU host its GPU model's (`match.gpu_model` found in the plan's
model name); every host on a compute fabric that fabric's (by kind and rated speed; an Ethernet
fabric with a rated speed scales its rows by it, one without a rated speed takes the rows measured
on the lab). Later profiles override earlier ones check by check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.errors import HealthError, Location
from aifactory.plan.model import FabricPlan, Host, SitePlan
from aifactory.resources import resource_dir
from aifactory.spec.model import HealthThreshold

TABLE_NAME = "health_thresholds.json"
SCHEMA = "aifactory.health-thresholds/v1"
OPS = (">=", "<=")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def table_path() -> Path:
    return resource_dir("policies") / "data" / TABLE_NAME


def load_table(path: Path | None = None) -> dict[str, Any]:
    where = path or table_path()
    try:
        table = json.loads(where.read_text())
    except (OSError, ValueError) as exc:
        raise HealthError(
            f"cannot read the threshold table: {exc}", location=Location(file=str(where))
        ) from exc
    if (
        not isinstance(table, dict)
        or table.get("schema") != SCHEMA
        or not isinstance(table.get("profiles"), dict)
    ):
        raise HealthError(f"the threshold table is not {SCHEMA}", location=Location(file=str(where)))
    problems = table_problems(table)
    if problems:
        raise HealthError(
            f"the threshold table has {len(problems)} row(s) without a cited source: {problems[0]}",
            location=Location(file=str(where)),
            hint="every threshold needs op, value, unit, derivation and source.document/date/quote",
        )
    return table


def table_problems(table: dict[str, Any]) -> list[str]:
    """Rows that lack a number, an operator, or the document, date and quote they come from."""
    problems = []
    for name, profile in sorted(table["profiles"].items()):
        rows = profile.get("thresholds") if isinstance(profile, dict) else None
        if not isinstance(rows, dict) or not rows:
            problems.append(f"profiles.{name}: no thresholds")
            continue
        for check, row in sorted(rows.items()):
            problems += _row_problems(f"profiles.{name}.thresholds.{check}", row)
    return problems


def _row_problems(where: str, row: Any) -> list[str]:
    if not isinstance(row, dict) or row.get("op") not in OPS or not isinstance(row.get("value"), int | float):
        return [f"{where}: needs op (>= or <=) and a numeric value"]
    source: dict[str, Any] = row["source"] if isinstance(row.get("source"), dict) else {}
    problems = [
        f"{where}: source.{key} is missing"
        for key in ("document", "date", "quote")
        if not str(source.get(key) or "").strip()
    ]
    if not _DATE.match(str(source.get("date", ""))):
        problems.append(f"{where}: source.date is not YYYY-MM-DD")
    if not str(row.get("derivation") or "").strip():
        problems.append(f"{where}: derivation is missing")
    return problems


@dataclass(frozen=True)
class Threshold:
    check: str
    op: str
    value: float
    unit: str
    profile: str

    def as_policy(self) -> dict[str, Any]:
        return {"op": self.op, "value": self.value, "unit": self.unit}

    def describe(self) -> str:
        return f"{self.op} {self.value:g} {self.unit}"


def compute_fabric(plan: SitePlan, host: Host) -> FabricPlan | None:
    """The compute fabric the host is on (its all-reduce and bandwidth path), if any."""
    names = {interface.fabric for interface in host.interfaces}
    for fabric in plan.fabrics:
        if fabric.purpose == "compute" and fabric.name in names:
            return fabric
    return None


def profiles_for(plan: SitePlan, host: Host, table: dict[str, Any]) -> list[str]:
    """The profiles that apply to `host`, most general first."""
    chosen = ["host"]
    profiles: dict[str, Any] = table["profiles"]
    if host.mounts and "storage" in profiles:
        chosen.append("storage")
    if host.gpus is not None:
        model = host.gpus.model.lower()
        for name, profile in sorted(profiles.items()):
            wanted = profile.get("match", {}).get("gpu_model")
            if name.startswith("gpu/") and wanted and wanted.lower() in model:
                chosen.append(name)
                break
    fabric = compute_fabric(plan, host)
    if fabric is not None:
        chosen += _fabric_profiles(profiles, fabric)[:1]
    return chosen


def _fabric_profiles(profiles: dict[str, Any], fabric: FabricPlan) -> list[str]:
    found = []
    for name, profile in sorted(profiles.items()):
        match = profile.get("match", {})
        if not name.startswith("fabric/") or match.get("fabric_kind") != fabric.kind:
            continue
        speed = match.get("speed_gbps")
        if speed == "any" and fabric.speed_gbps is not None:
            found.append(name)
        elif speed is None and fabric.speed_gbps is None:
            found.append(name)
        elif (
            speed not in ("any", None)
            and fabric.speed_gbps is not None
            and float(speed) == float(fabric.speed_gbps)
        ):
            found.append(name)
    return found


def thresholds_for(plan: SitePlan, host: Host, table: dict[str, Any]) -> dict[str, Threshold]:
    """Each check's threshold for `host` (a later profile's row overrides an earlier one's)."""
    fabric = compute_fabric(plan, host)
    rows: dict[str, Threshold] = {}
    for name in profiles_for(plan, host, table):
        profile = table["profiles"][name]
        scale = (
            float(fabric.speed_gbps)
            if profile.get("scale") == "speed_gbps" and fabric and fabric.speed_gbps
            else 1.0
        )
        for check, row in profile["thresholds"].items():
            unit = str(row["unit"]).removeprefix("x speed_gbps ") if scale != 1.0 else str(row["unit"])
            rows[check] = Threshold(check, row["op"], round(float(row["value"]) * scale, 6), unit, name)
    if host.gpus is not None:  # the plan says how many GPUs each host of the pool has
        rows["gpu-count"] = Threshold("gpu-count", ">=", float(host.gpus.count), "gpus", "plan")
    return rows


def nvidia_smi_product(plan: SitePlan, host: Host, table: dict[str, Any]) -> str | None:
    """The product name nvidia-smi shows for the host's GPU model (None: no GPU profile matched)."""
    for name in profiles_for(plan, host, table):
        product = table["profiles"][name].get("nvidia_smi_product")
        if product:
            return str(product)
    return None


def tightened(
    rows: dict[str, Threshold], pool: str, tightenings: Sequence[HealthThreshold]
) -> dict[str, Threshold]:
    """`rows` with the spec's `health.thresholds` for `pool` laid over them. A value may only be
    stricter than the table's: a looser one, or one for a check no row of this pool's hosts has, is
    refused (a looser threshold would need a waiver, which the health gate does not take)."""
    result = dict(rows)
    for index, wanted in enumerate(tightenings):
        if wanted.pool != pool:
            continue
        where = Location(path=f"health.thresholds[{index}]")
        row = result.get(wanted.check)
        if row is None:
            raise HealthError(
                f"no threshold of the table applies to {wanted.check} on pool {pool}: nothing to tighten",
                location=where,
                hint="see the checks and profiles in docs/health.md",
            )
        looser = wanted.value < row.value if row.op == ">=" else wanted.value > row.value
        if looser:
            raise HealthError(
                f"{wanted.check} {row.op} {wanted.value:g} on pool {pool} would loosen the table's "
                f"{row.describe()} ({row.profile})",
                location=where,
                hint="the spec may only tighten a threshold; a looser one needs a waiver",
            )
        result[wanted.check] = Threshold(wanted.check, row.op, wanted.value, row.unit, "spec")
    return result
