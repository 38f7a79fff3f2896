"""What the runtime reads from the site plan (plan.json, as `aifactory plan -o` or the bundle writes it).

Nodes get the plan as JSON; the runtime reads that dict and never imports the spec or plan builders.
Planned storage paths are absolute host paths (`/srv/share/datasets/vitals`); `storage_root` is a
prefix put in front of them where the storage is mounted somewhere else (the lab, and tests).
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.errors import Location, UsageError


@dataclass(frozen=True)
class RuntimePlan:
    data: dict[str, Any]
    source: str = "<plan>"
    storage_root: Path = Path("/")

    @classmethod
    def load(cls, path: Path | str, *, storage_root: Path | str | None = None) -> RuntimePlan:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"cannot read the site plan {path}: {exc}",
                location=Location(file=str(path)),
                hint="give the plan.json that `aifactory plan -o` or the bundle wrote",
            ) from None
        if not isinstance(data, dict) or data.get("schema") != "aifactory.plan/v1":
            raise UsageError(
                f"{path} is not an aifactory site plan (schema aifactory.plan/v1)",
                location=Location(file=str(path)),
            )
        return cls(data, str(path), Path(storage_root or "/"))

    @property
    def site(self) -> str:
        return str(self.data["site"]["name"])

    def _named(self, kind: str, name: str) -> dict[str, Any]:
        for item in self.data.get(kind, []):
            if item.get("name") == name:
                return dict(item)
        known = ", ".join(sorted(i.get("name", "?") for i in self.data.get(kind, []))) or "none"
        raise UsageError(
            f"the site plan has no {kind[:-1]} {name!r}",
            location=Location(file=self.source),
            hint=f"{kind}: {known}",
        )

    def host(self, name: str) -> dict[str, Any]:
        return self._named("hosts", name)

    def dataset(self, name: str) -> dict[str, Any]:
        return self._named("datasets", name)

    def model(self, name: str) -> dict[str, Any]:
        return self._named("models", name)

    def local_path(self, host_path: str) -> Path:
        return self.storage_root / host_path.lstrip("/")

    def dataset_dir(self, name: str) -> Path:
        return self.local_path(str(self.dataset(name)["host_path"]))

    def model_dir(self, name: str) -> Path:
        return self.local_path(str(self.model(name)["host_path"]))

    def this_host(self, explicit: str | None = None) -> dict[str, Any] | None:
        """The plan's entry for this machine: named explicitly, else by hostname; None when unknown."""
        if explicit:
            return self.host(explicit)
        hostname = socket.gethostname().split(".")[0]
        for host in self.data.get("hosts", []):
            if host.get("name") == hostname:
                return dict(host)
        return None
