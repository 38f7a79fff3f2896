"""StoragePool: a storage system's declared configuration (exports, filesets, subvolumes or buckets
per dataset and model, with owner, encryption and replicas) as artifacts the storage admins apply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from aifactory.plan.model import SitePlan, StoragePlan
from aifactory.provision.render import render_storage
from aifactory_stack.resources import Artifact, artifact_children, artifact_outputs


@dataclass(frozen=True)
class StoragePoolArgs:
    plan: SitePlan
    storage: StoragePlan
    directory: str


class StoragePool(pulumi.ComponentResource):
    artifacts: dict[str, Artifact]
    outputs: dict[str, Any]

    def __init__(self, name: str, args: StoragePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aifactory:storage:StoragePool", name, None, opts)
        rendered = render_storage(args.plan, args.storage)
        self.artifacts = artifact_children(self, name, args.directory, rendered)
        self.outputs = {
            "kind": args.storage.kind,
            "encrypted_at_rest": args.storage.encrypted_at_rest,
            "replicas": list(args.storage.replicas),
            "artifacts": artifact_outputs(args.directory, rendered),
        }
        self.register_outputs({"storage": self.outputs})
