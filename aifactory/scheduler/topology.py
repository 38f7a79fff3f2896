"""The Slurm cluster a plan implies, as data the `slurm` role renders (inventory group var
`aifactory_slurm`): controller, nodes with CPUs, memory and GPUs, one partition per compute pool,
one account per tenant (with the partitions of the tenant's pools).

`slurm_topology(plan)` takes a `SitePlan`; `slurm_topology_of(plan_dict)` takes the plan as JSON data
(`SitePlan.to_dict()`, the bundle's plan.json), as the inventory renderer holds it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aifactory.plan.model import SitePlan

COMPUTE_ROLES = ("gpu", "cpu")


def slurm_topology(plan: SitePlan) -> dict[str, Any] | None:
    """None when the site has no control host or no compute pool (then there is no Slurm)."""
    return slurm_topology_of(plan.to_dict())


def slurm_topology_of(plan: Mapping[str, Any]) -> dict[str, Any] | None:
    """The same, from the plan's JSON form."""
    control_host = plan.get("control_host")
    compute_pools = [p for p in plan.get("pools", []) if p["role"] in COMPUTE_ROLES]
    if control_host is None or not compute_pools:
        return None
    hosts = {h["name"]: h for h in plan["hosts"]}
    nodes = []
    for host in plan["hosts"]:
        if host["role"] not in COMPUTE_ROLES:
            continue
        gpus = host.get("gpus") or {}
        nodes.append(
            {
                "name": host["name"],
                "address": host["management_address"],
                "cpus": host.get("cpus") or 1,
                "real_memory_mib": (host.get("memory_gib") or 1) * 1024,
                "gpus": int(gpus.get("count", 0)),
                "gpu_model": gpus.get("model"),
                "partition": host["pool"],
            }
        )
    pool_names = [p["name"] for p in compute_pools]
    return {
        "cluster_name": plan["site"]["name"],
        "controller": {"name": control_host, "address": hosts[control_host]["management_address"]},
        "nodes": nodes,
        "partitions": [
            {"name": p["name"], "nodes": p["hosts"], "default": i == 0} for i, p in enumerate(compute_pools)
        ],
        "accounts": [
            {"name": t["name"], "partitions": [p for p in t["pools"] if p in pool_names]}
            for t in plan.get("tenants", [])
        ],
    }
