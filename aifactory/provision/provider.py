"""Pulumi dynamic providers: thin adapters from Pulumi's calls to the plain logic classes.

Nothing secret is ever an attribute of a provider: Pulumi pickles the provider object into the
state (`__provider`), so the BMC credential reaches `create`/`update`/`delete` only through the
resource's properties, where it is a Pulumi secret (encrypted in state by the passphrase provider).
Nor is the Redfish client (sushy's connection and resources): the logic builds one inside each call
from those plain properties and drops it after (docs/provision.md, "The Redfish client").
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import (
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)

from aifactory.provision.artifacts import ArtifactLogic
from aifactory.provision.host import BareMetalHostLogic


class BareMetalHostProvider(ResourceProvider):
    """Redfish bare-metal host. Replacements delete first: old and new are the same machine."""

    serialize_as_secret_always = False  # it holds nothing secret (a test pickles it to prove that)

    def __init__(self, poll_interval: float = 1.0) -> None:
        super().__init__()
        self.poll_interval = poll_interval

    def _logic(self) -> BareMetalHostLogic:
        return BareMetalHostLogic(poll_interval=self.poll_interval)

    def create(self, props: dict[str, Any]) -> CreateResult:
        host_id, outs = self._logic().create(props)
        return CreateResult(host_id, outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        result = self._logic().diff(olds, news)
        return DiffResult(changes=result.changed, replaces=list(result.replaces), delete_before_replace=True)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._logic().update(olds, news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, self._logic().read(props))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        self._logic().delete(props)


class ArtifactProvider(ResourceProvider):
    """A rendered configuration file written under the site's state folder."""

    serialize_as_secret_always = False

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = ArtifactLogic().write(props)
        return CreateResult(outs["digest"], outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        result = ArtifactLogic().diff(olds, news)
        return DiffResult(changes=bool(result), replaces=[k for k in result if k == "path"])

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(ArtifactLogic().write(news))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        ArtifactLogic().remove(props)
