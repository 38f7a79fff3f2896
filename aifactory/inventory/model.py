"""The Ansible inventory aifactory renders: groups, host vars and group vars, as plain data.

Kept separate from the rendering so that tests and the deploy driver can look at the inventory
without reading YAML back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def group_name(kind: str, name: str) -> str:
    """`pool`, `cpu-big` -> `pool_cpu_big`: Ansible group names allow no '-' (spec names allow no '_')."""
    return f"{kind}_{name.replace('-', '_')}"


@dataclass
class Group:
    name: str
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    description: str = ""


@dataclass
class Inventory:
    """One site's inventory: every host belongs to `all` and to the groups that list it."""

    site: str
    groups: dict[str, Group]
    host_vars: dict[str, dict[str, Any]]
    group_vars: dict[str, Any]

    @property
    def hosts(self) -> list[str]:
        return list(self.host_vars)

    def group_hosts(self, name: str) -> list[str]:
        """Every host of a group, its children's included, in plan order."""
        found: set[str] = set()
        pending = [name]
        while pending:
            group = self.groups[pending.pop()]
            found.update(group.hosts)
            pending.extend(group.children)
        return [h for h in self.host_vars if h in found]

    def as_dict(self) -> dict[str, Any]:
        """The YAML inventory's tree (hosts with their connection address; the rest lives in vars)."""
        children: dict[str, Any] = {}
        for name in sorted(self.groups):
            group = self.groups[name]
            body: dict[str, Any] = {}
            if group.hosts:
                body["hosts"] = {h: None for h in group.hosts}
            if group.children:
                body["children"] = {c: None for c in group.children}
            children[name] = body
        return {"all": {"children": children}}
