"""The Slurm cluster a plan implies, as data the `slurm` role renders (inventory group var
`aifactory_slurm`): controller, nodes with CPUs, memory and GPUs, one partition per compute pool,
one account per tenant (with the partitions of the tenant's pools).

`slurm_topology(plan)` takes a `SitePlan` (the bundle's plan.json is read with `SitePlan.load`)."""

from __future__ import annotations

from typing import Any

from aifactory.plan.model import Host, SitePlan

COMPUTE_ROLES = ("gpu", "cpu")


def slurm_topology(plan: SitePlan) -> dict[str, Any] | None:
    """None when the site has no control host or no compute pool (then there is no Slurm)."""
    compute_pools = [p for p in plan.pools if p.role in COMPUTE_ROLES]
    if plan.control_host is None or not compute_pools:
        return None
    pool_names = [p.name for p in compute_pools]
    return {
        "cluster_name": plan.name,
        "controller": {
            "name": plan.control_host,
            "address": plan.host(plan.control_host).management_address,
        },
        "nodes": [_node(h) for h in plan.hosts if h.role in COMPUTE_ROLES],
        "partitions": [
            {"name": p.name, "nodes": list(p.hosts), "default": i == 0} for i, p in enumerate(compute_pools)
        ],
        "accounts": [
            {"name": t.name, "partitions": [p for p in t.pools if p in pool_names]} for t in plan.tenants
        ],
    }


def _node(host: Host) -> dict[str, Any]:
    return {
        "name": host.name,
        "address": host.management_address,
        "cpus": host.cpus or 1,
        "real_memory_mib": (host.memory_gib or 1) * 1024,
        "gpus": host.gpus.count if host.gpus else 0,
        "gpu_model": host.gpus.model if host.gpus else None,
        "partition": host.pool,
    }
