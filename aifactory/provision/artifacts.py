"""Rendered artifacts on disk: written atomically, named by digest, diffed by content.

An artifact's properties: `directory` (absolute), `name` (a file name, no folders), `content`,
`digest` (`sha256:<hex>` of the content). The file's digest on disk is compared too, so a file a
person edited by hand shows up as drift in the preview.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from aifactory.errors import ProvisionError


def digest_of(content: str) -> str:
    return "sha256:" + hashlib.sha256(content.encode()).hexdigest()


class ArtifactLogic:
    @staticmethod
    def path(props: dict[str, Any]) -> Path:
        name = str(props["name"])
        if "/" in name or name in ("", ".", ".."):
            raise ProvisionError(f"artifact name {name!r} must be a plain file name", code="artifact-name")
        return Path(str(props["directory"])) / name

    def write(self, props: dict[str, Any]) -> dict[str, Any]:
        content = str(props["content"])
        if digest_of(content) != props.get("digest"):
            raise ProvisionError(
                f"artifact {props['name']}: its digest does not match its content", code="artifact-digest"
            )
        target = self.path(props)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = target.with_name(f".{target.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        os.replace(tmp, target)
        return {**props, "path": str(target)}

    def diff(self, olds: dict[str, Any], news: dict[str, Any]) -> list[str]:
        changed = [k for k in ("directory", "name", "digest") if olds.get(k) != news.get(k)]
        if "directory" in changed or "name" in changed:
            changed.append("path")
        target = self.path(olds)
        on_disk = digest_of(target.read_text()) if target.exists() else None
        if on_disk != news.get("digest") and "digest" not in changed:
            changed.append("digest")
        return changed

    def remove(self, props: dict[str, Any]) -> None:
        self.path(props).unlink(missing_ok=True)
