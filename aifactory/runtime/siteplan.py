"""What the runtime reads from the site plan (plan.json, as `aifactory plan -o` or the bundle writes it).

Nodes get the plan as JSON and read it into the plan's own types (aifactory.plan.model, standard
library only); the runtime never imports the spec or plan builders. Planned storage paths are absolute
host paths (`/srv/share/datasets/vitals`); `storage_root` is a prefix put in front of them where the
storage is mounted somewhere else (the lab, and tests).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from aifactory.errors import Location, UsageError
from aifactory.plan.model import DatasetPlan, Host, ModelPlan, SitePlan


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_Item = TypeVar("_Item", bound=_Named)


@dataclass(frozen=True)
class RuntimePlan:
    plan: SitePlan
    source: str = "<plan>"
    storage_root: Path = Path("/")

    @classmethod
    def load(cls, path: Path | str, *, storage_root: Path | str | None = None) -> RuntimePlan:
        return cls(SitePlan.load(path), str(path), Path(storage_root or "/"))

    @property
    def site(self) -> str:
        return self.plan.name

    def _named(self, kind: str, items: Iterable[_Item], name: str) -> _Item:
        listed = list(items)
        for item in listed:
            if item.name == name:
                return item
        known = ", ".join(sorted(i.name for i in listed)) or "none"
        raise UsageError(
            f"the site plan has no {kind[:-1]} {name!r}",
            location=Location(file=self.source),
            hint=f"{kind}: {known}",
        )

    def host(self, name: str) -> Host:
        return self._named("hosts", self.plan.hosts, name)

    def dataset(self, name: str) -> DatasetPlan:
        return self._named("datasets", self.plan.datasets, name)

    def model(self, name: str) -> ModelPlan:
        return self._named("models", self.plan.models, name)

    def local_path(self, host_path: str) -> Path:
        return self.storage_root / host_path.lstrip("/")

    def dataset_dir(self, name: str) -> Path:
        return self.local_path(str(self.dataset(name).host_path))

    def model_dir(self, name: str) -> Path:
        return self.local_path(str(self.model(name).host_path))

    def this_host(self, explicit: str | None = None) -> Host | None:
        """The plan's entry for this machine: named explicitly, else by hostname; None when unknown."""
        if explicit:
            return self.host(explicit)
        hostname = socket.gethostname().split(".")[0]
        return next((h for h in self.plan.hosts if h.name == hostname), None)
