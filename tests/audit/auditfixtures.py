"""Helpers shared by the audit tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "inventory" / "lab" / "site.yaml"
NATIONAL = ROOT / "inventory" / "examples" / "national" / "site.yaml"
TIMESTAMP = "2026-11-22T09:00:00Z"


def failing_spec(folder: Path, *, name: str = "labfail", fix_encryption: bool = False) -> Path:
    """The lab, renamed, with three policy failures and one of them waived:
    - the share is unencrypted but holds confidential data (SC-28 family, failing);
    - research (cleared internal) is granted read on the confidential dataset (AC-3(3), failing);
    - an egress endpoint on an air-gapped site, outside the jurisdiction (SC-7 and AC-4; the
      jurisdiction finding is waived by ciso@lab.example until 2030-06-30)."""
    spec = yaml.safe_load(LAB.read_text())
    spec["site"]["name"] = name
    spec["storage"][0]["encrypted_at_rest"] = fix_encryption
    spec["access"].append(
        {
            "tenant": "research",
            "resource": "dataset/vitals",
            "actions": ["read"],
            "approved_by": "lead@lab.example",
            "expires": "2030-01-31",
        }
    )
    spec["egress"]["allow"] = [{"name": "ntp-de", "endpoint": "ntp.example.de:123", "country": "DE"}]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    waivers = {
        "waivers": [
            {
                "rule": "egress.endpoint_outside_jurisdiction",
                "resource": "egress/ntp-de",
                "reason": "time source until the national NTP service opens",
                "approved_by": "ciso@lab.example",
                "expires": "2030-06-30",
            }
        ]
    }
    (folder / "site.waivers.yaml").write_text(yaml.safe_dump(waivers, sort_keys=False))
    return path


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("AIFACTORY_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts") / "audit"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def checkpoint_files(folder: Path, step: int) -> Path:
    """A checkpoint folder as training leaves it (the bytes do not matter to signing; no torch)."""
    folder.mkdir(parents=True)
    files = {}
    for name in ("model.safetensors", "optimizer.safetensors"):
        (folder / name).write_bytes(f"{name} at step {step}".encode())
        files[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "checkpoint.json").write_text(json.dumps({"step": step, "files": files}))
    return folder
