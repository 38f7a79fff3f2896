"""The Ansible inventory aifactory renders: groups, host vars and group vars, as plain data.

Kept separate from the rendering so that tests and the deploy driver can look at the inventory
without reading YAML back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    """One site's inventory: every host belongs to `all` and to the groups that list it.

    `host_data` and `site_data` are variables held beside the inventory rather than in it (per host,
    and once for the site): `group_vars` defines each of them as a lookup of its file, so that Ansible
    reads one only where a role uses it instead of copying it into every host's variables."""

    site: str
    groups: dict[str, Group]
    host_vars: dict[str, dict[str, Any]]
    group_vars: dict[str, Any]
    host_data: dict[str, dict[str, Any]] = field(default_factory=dict)
    site_data: dict[str, Any] = field(default_factory=dict)

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

    def inlined(self) -> Inventory:
        """The same variables with the held-beside ones inside the inventory (group_vars/all and each
        host's vars), as rendered before issue 31: what the comparisons and the benchmark measure
        against."""
        group_vars = {**self.group_vars, **self.site_data}
        host_vars = {h: {**values, **self.host_data.get(h, {})} for h, values in self.host_vars.items()}
        for name in {name for values in self.host_data.values() for name in values}:
            group_vars.pop(name, None)
        return replace(self, host_vars=host_vars, group_vars=group_vars, host_data={}, site_data={})

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
