"""Where the admin's machine finds a model's registry, and what `aifactory models` lists from it.

On a real site the control host mounts the site storage at its planned path (`host_path`). The local
lab keeps each storage in a folder of this machine that its hosts mount: that folder is read when a
lab of the site is up here (the same choice as `site_connection`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aifactory.errors import ModelRefused, UsageError
from aifactory.plan.model import ModelPlan, SitePlan
from aifactory.trust.models import ALIASES, Inspector, ModelTrust, Registry, verify_version


def model_dir(plan: SitePlan, model: ModelPlan, *, lab: bool | None = None) -> Path:
    """The model's folder on the site storage, as this machine reaches it."""
    if model.host_path is None:
        raise UsageError(
            f"model {model.name} is on object storage ({model.url}): its registry is not on a mount",
            hint="keep models that are served on mounted storage",
        )
    return on_storage(plan, model.storage, model.path, lab=lab)


def on_storage(plan: SitePlan, storage: str, path: str, *, lab: bool | None = None) -> Path:
    """A path on one of the site's mounted storages, as this machine reaches it."""
    from aifactory.lab.connection import lab_is_up
    from aifactory.lab.layout import LabLayout

    if lab_is_up(plan.name) if lab is None else lab:
        return LabLayout.locate(plan.name).storage_dir(storage) / path.lstrip("/")
    mount = next((s.mount_path for s in plan.storage if s.name == storage), None)
    if mount is None:
        raise UsageError(f"storage {storage} of site {plan.name} is not mounted on the control host")
    return Path(mount.rstrip("/") + "/" + path.lstrip("/"))


def describe_model(folder: Path, trust: ModelTrust, *, name: str) -> dict[str, Any]:
    """One model's registry: versions (signature, provenance, aliases), promotion history, refusals."""
    inspection = Inspector(folder, trust).inspect()
    registry = Registry(folder)
    history = [p.describe() for p in inspection.promotions.records]
    versions = []
    for version_folder in registry.version_folders():
        entry: dict[str, Any] = {"digest": f"sha256:{version_folder.name}"}
        try:
            version = verify_version(registry, version_folder, trust)
        except ModelRefused as refused:  # listed with its reason, not fatal
            entry |= {"signature": "refused", "reason": refused.reason, "detail": refused.message}
        else:
            entry |= {
                "signature": "verified",
                "signature_file": str(version_folder / "model.sig"),
                "step": version.provenance.get("step"),
                "job": version.provenance.get("job"),
                "dataset": version.provenance.get("dataset"),
                "key": version.provenance.get("key"),
                "alias": inspection.alias_of(version.digest),
                "promotions": [p for p in history if p.get("digest") == version.digest],
            }
        versions.append(entry)
    aliases = {
        alias: (promotion.describe() if (promotion := inspection.promotions.alias(alias)) else None)
        for alias in ALIASES
    }
    return {
        "model": name,
        "folder": str(folder),
        "aliases": aliases,
        "versions": versions,
        "history": history,
        "refused": [r.as_dict() for r in inspection.refused],
    }
