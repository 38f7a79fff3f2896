"""The dynamic resources the components create (Redfish has no Pulumi provider; files neither).

Type tokens: `pulumi-python:dynamic/compute:BareMetalHost`, `pulumi-python:dynamic/artifacts:Artifact`
(Pulumi prefixes every dynamic resource with `pulumi-python:dynamic`).
"""

from __future__ import annotations

import pickle
from typing import Any

import pulumi
from pulumi.dynamic import Resource

from aifactory.provision.artifacts import digest_of
from aifactory.provision.provider import ArtifactProvider, BareMetalHostProvider
from aifactory.provision.render import Artifact as Rendered

# pulumi.dynamic.serialize_provider wraps pickle._Pickler._batch_setitems in a sorting wrapper on
# every call and never restores it, so each dynamic resource nests one wrapper deeper and a site with
# about a thousand hosts hits Python's recursion limit. Restoring the original before each resource
# keeps the nesting at one (same sorted, deterministic bytes).
_ORIGINAL_BATCH_SETITEMS = pickle._Pickler._batch_setitems  # type: ignore[attr-defined]


def _unwrap_pickler() -> None:
    pickle._Pickler._batch_setitems = _ORIGINAL_BATCH_SETITEMS  # type: ignore[attr-defined]


OUTPUT_ONLY = ("identity", "inventory", "power_state", "boot_reported", "bmc_state")


class BareMetalHost(Resource, module="compute", name="BareMetalHost"):
    identity: pulumi.Output[dict[str, Any]]
    inventory: pulumi.Output[dict[str, Any]]
    power_state: pulumi.Output[str]
    boot_reported: pulumi.Output[dict[str, Any]]
    bmc_state: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    boot: pulumi.Output[dict[str, Any]]
    credentials: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        props: dict[str, Any],
        opts: pulumi.ResourceOptions | None = None,
        *,
        poll_interval: float = 1.0,
    ) -> None:
        secret_outputs = pulumi.ResourceOptions(additional_secret_outputs=["credentials"])
        _unwrap_pickler()
        super().__init__(
            BareMetalHostProvider(poll_interval),
            name,
            {**props, **{k: None for k in OUTPUT_ONLY}},
            pulumi.ResourceOptions.merge(opts, secret_outputs),
        )


class Artifact(Resource, module="artifacts", name="Artifact"):
    path: pulumi.Output[str]
    digest: pulumi.Output[str]
    content: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        directory: str,
        file_name: str,
        content: str,
        extra: dict[str, Any] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "directory": directory,
            "name": file_name,
            "content": content,
            "digest": digest_of(content),
            "path": None,
            **(extra or {}),
        }
        _unwrap_pickler()
        super().__init__(ArtifactProvider(), name, props, opts)


def artifact_children(
    parent: pulumi.Resource, name: str, directory: str, rendered: list[Rendered]
) -> dict[str, Artifact]:
    """One Artifact resource per rendered file, parented to the component that rendered it."""
    return {
        a.name: Artifact(
            f"{name}-{a.name}",
            directory=directory,
            file_name=a.name,
            content=a.content,
            extra={"complete": a.complete},
            opts=pulumi.ResourceOptions(parent=parent),
        )
        for a in rendered
    }


def artifact_outputs(directory: str, rendered: list[Rendered]) -> dict[str, Any]:
    return {a.name: {**a.as_dict(), "path": f"{directory}/{a.name}"} for a in rendered}
