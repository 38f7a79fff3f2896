"""GpuNodePool: one BareMetalHost per planned host of a node pool (every role, not only gpu)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from aifactory.plan.model import Host, PoolPlan
from aifactory_stack.resources import BareMetalHost
from aifactory_stack.settings import BmcSettings, BootSettings


@dataclass(frozen=True)
class GpuNodePoolArgs:
    pool: PoolPlan
    hosts: list[Host]
    credentials: dict[str, pulumi.Output[str]]
    bmc: BmcSettings
    boot: BootSettings
    assets: dict[str, dict[str, Any]]


def expectation(host: Host, asset: dict[str, Any]) -> dict[str, Any]:
    gpus = host.gpus
    return {
        "cpus": host.cpus,
        "memory_gib": host.memory_gib,
        "gpu_count": gpus.count if gpus else None,
        "gpu_model": gpus.model if gpus else None,
        "manufacturer": asset.get("manufacturer"),
        "model": asset.get("model"),
        "serial": asset.get("serial"),
    }


class GpuNodePool(pulumi.ComponentResource):
    hosts: dict[str, BareMetalHost]
    outputs: pulumi.Output[dict[str, Any]]

    def __init__(self, name: str, args: GpuNodePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aifactory:compute:GpuNodePool", name, None, opts)
        self.hosts = {}
        unmanaged: dict[str, Any] = {}
        for host in args.hosts:
            if host.bmc is None:
                unmanaged[host.name] = _unmanaged(host)
                continue
            asset = args.assets.get(host.name) or {}
            self.hosts[host.name] = BareMetalHost(
                host.name,
                {
                    "host": host.name,
                    "endpoint": args.bmc.endpoint(host),
                    "system": asset.get("system"),
                    "credentials": args.credentials[host.name],
                    "credentials_ref": host.bmc.credentials,
                    "boot": args.boot.as_dict(),
                    "expect": expectation(host, asset),
                    "tls": args.bmc.tls(),
                    "power_timeout": args.bmc.power_timeout,
                    "bmc_address": host.bmc.address,
                },
                pulumi.ResourceOptions(parent=self),
            )
        managed = {n: _host_output(h) for n, h in self.hosts.items()}
        self.outputs = (
            pulumi.Output.all(**managed).apply(lambda done: {**unmanaged, **done})
            if managed
            else pulumi.Output.from_input(unmanaged)
        )
        self.register_outputs({"hosts": self.outputs})


def _unmanaged(host: Host) -> dict[str, Any]:
    return {
        "bmc": None,
        "system": None,
        "boot": None,
        "inventory": None,
        "state": "unmanaged: the plan gives this host no BMC",
    }


def _host_output(host: BareMetalHost) -> pulumi.Output[dict[str, Any]]:
    return pulumi.Output.all(
        host.endpoint,
        host.bmc_state,
        host.power_state,
        host.identity,
        host.boot,
        host.boot_reported,
        host.inventory,
    ).apply(
        lambda v: {
            "bmc": {"endpoint": v[0], "state": v[1], "power_state": v[2]},
            "system": v[3],
            "boot": {**(v[4] or {}), "reported": v[5]},
            "inventory": v[6],
            "state": "provisioned",
        }
    )
