"""What changes between two plans: hosts and addresses added, removed and changed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifactory.errors import UsageError
from aifactory.plan.model import PLAN_SCHEMA


@dataclass(frozen=True)
class PlanDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: dict[str, list[str]] = field(default_factory=dict)  # host -> what changed

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def as_dict(self) -> dict[str, Any]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed}

    def render(self) -> str:
        if self.empty:
            return "no host or address changes"
        lines = [f"+ {name}" for name in self.added]
        lines += [f"- {name}" for name in self.removed]
        for name, changes in self.changed.items():
            lines.append(f"~ {name}")
            lines += [f"    {c}" for c in changes]
        lines.append(f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} changed")
        return "\n".join(lines)


def _addresses(host: dict[str, Any]) -> dict[str, str]:
    out = {f"{i['fabric']}[{i['rail']}]": i["address"] for i in host.get("interfaces", [])}
    if host.get("bmc"):
        out["bmc"] = host["bmc"]["address"]
    return out


def read_plan_file(path: str | Path) -> dict[str, Any]:
    """A plan written by `aifactory plan -o`, or a UsageError saying why the file is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the old plan {path}: {exc}") from None
    hosts = data.get("hosts") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("schema") != PLAN_SCHEMA
        or not isinstance(hosts, list)
        or not all(isinstance(h, dict) and isinstance(h.get("name"), str) for h in hosts)
    ):
        raise UsageError(f"{path} is not a plan written by `aifactory plan -o` ({PLAN_SCHEMA})")
    return data


def diff_plans(old: dict[str, Any], new: dict[str, Any]) -> PlanDiff:
    """Compare two serialized plans (dicts as written by `aifactory plan -o`)."""
    old_hosts = {h["name"]: h for h in old.get("hosts", [])}
    new_hosts = {h["name"]: h for h in new.get("hosts", [])}
    result = PlanDiff(
        added=[n for n in new_hosts if n not in old_hosts],
        removed=[n for n in old_hosts if n not in new_hosts],
    )
    for name, host in new_hosts.items():
        before = old_hosts.get(name)
        if before is None:
            continue
        changes: list[str] = []
        old_addr, new_addr = _addresses(before), _addresses(host)
        for key in sorted(set(old_addr) | set(new_addr)):
            if old_addr.get(key) != new_addr.get(key):
                changes.append(f"{key}: {old_addr.get(key) or '(none)'} -> {new_addr.get(key) or '(none)'}")
        old_mounts = sorted(m["path"] for m in before.get("mounts", []))
        new_mounts = sorted(m["path"] for m in host.get("mounts", []))
        if old_mounts != new_mounts:
            before_text, after_text = ", ".join(old_mounts) or "(none)", ", ".join(new_mounts) or "(none)"
            changes.append(f"mounts: {before_text} -> {after_text}")
        for key in ("pool", "role", "datacenter", "gpus", "cpus", "memory_gib"):
            if before.get(key) != host.get(key):
                changes.append(f"{key}: {before.get(key)} -> {host.get(key)}")
        if changes:
            result.changed[name] = changes
    return result
