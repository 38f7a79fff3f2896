"""The whole site: a GpuNodePool per node pool, a Fabric per fabric, a StoragePool per storage
system, and the stack outputs `aifactory provision` turns into provision/outputs.json."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from aifactory_stack.compute import GpuNodePool, GpuNodePoolArgs
from aifactory_stack.fabric import Fabric, FabricArgs
from aifactory_stack.settings import StackSettings
from aifactory_stack.storage import StoragePool, StoragePoolArgs


@dataclass(frozen=True)
class Site:
    pools: dict[str, GpuNodePool]
    fabrics: dict[str, Fabric]
    storage: dict[str, StoragePool]


def build_site(settings: StackSettings) -> Site:
    plan = settings.plan
    pools = {
        pool.name: GpuNodePool(
            f"{settings.site}-{pool.name}",
            GpuNodePoolArgs(
                pool=pool,
                hosts=plan.hosts_in_pool(pool.name),
                credentials=settings.credentials,
                bmc=settings.bmc,
                boot=settings.boot,
                assets=settings.assets,
            ),
        )
        for pool in plan.pools
    }
    directory = str(settings.artifacts_dir)
    fabrics = {
        f.name: Fabric(
            f"{settings.site}-{f.name}",
            FabricArgs(
                plan=plan,
                fabric=f,
                pkeys=settings.pkeys,
                facts=settings.facts,
                directory=f"{directory}/fabrics",
            ),
        )
        for f in plan.fabrics
    }
    storage = {
        s.name: StoragePool(
            f"{settings.site}-{s.name}",
            StoragePoolArgs(plan=plan, storage=s, directory=f"{directory}/storage"),
        )
        for s in plan.storage
    }
    hosts = pulumi.Output.all(*[p.outputs for p in pools.values()]).apply(
        lambda parts: {name: value for part in parts for name, value in sorted(part.items())}
    )
    pulumi.export("site", settings.site)
    pulumi.export("hosts", hosts)
    pulumi.export("fabrics", {name: f.outputs for name, f in fabrics.items()})
    pulumi.export("storage", {name: s.outputs for name, s in storage.items()})
    pulumi.export("pkeys", {t: f"0x{k:04x}" for t, k in sorted(settings.pkeys.items())})
    return Site(pools, fabrics, storage)
