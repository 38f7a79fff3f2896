"""Ansible inventory rendering: plan (+ provisioning outputs, + bundle location) -> YAML folder."""

from aifactory.inventory.model import Group, Inventory, group_name
from aifactory.inventory.render import build_inventory, plan_digest, render_files, write_inventory

__all__ = [
    "Group",
    "Inventory",
    "build_inventory",
    "group_name",
    "plan_digest",
    "render_files",
    "write_inventory",
]
