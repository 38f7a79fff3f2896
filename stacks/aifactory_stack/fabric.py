"""Fabric: a fabric's configuration artifacts (partitions.conf for InfiniBand, a VLAN/MTU/QoS
document for RoCE and Ethernet), rendered from the plan and written with their digests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from aifactory.plan.model import FabricPlan, SitePlan
from aifactory.provision.render import render_fabric
from aifactory_stack.resources import Artifact, artifact_children, artifact_outputs


@dataclass(frozen=True)
class FabricArgs:
    plan: SitePlan
    fabric: FabricPlan
    pkeys: dict[str, int]
    facts: dict[str, Any]
    directory: str


class Fabric(pulumi.ComponentResource):
    artifacts: dict[str, Artifact]
    outputs: dict[str, Any]

    def __init__(self, name: str, args: FabricArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aifactory:network:Fabric", name, None, opts)
        rendered = render_fabric(args.plan, args.fabric, pkeys=args.pkeys, facts=args.facts)
        self.artifacts = artifact_children(self, name, args.directory, rendered)
        tenants = sorted(t.name for t in args.plan.tenants)
        self.outputs = {
            "kind": args.fabric.kind,
            "artifacts": artifact_outputs(args.directory, rendered),
            "complete": all(a.complete for a in rendered),
            "partitions": (
                {t: f"0x{args.pkeys[t]:04x}" for t in tenants} if args.fabric.kind == "infiniband" else {}
            ),
        }
        self.register_outputs({"fabric": self.outputs})
