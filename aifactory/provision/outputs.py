"""The provisioning outputs file, `<state>/provision/outputs.json`, read by the inventory stage.

Schema `aifactory.provision-outputs/v1` (documented in docs/provision.md):

    {
      "schema": "aifactory.provision-outputs/v1",
      "site": "lab",
      "plan_digest": "sha256:...",            # the plan these outputs were made from
      "hosts": {                               # every planned host, by name
        "<host>": {
          "state": "provisioned" | "unmanaged: ...",
          "bmc": {"endpoint": "https://10.9.0.3", "state": "reachable", "power_state": "On"} | null,
          "system": {"system_id", "uuid", "manufacturer", "model", "serial", "macs": [...], "sockets",
                     "cpus", "memory_gib", "gpu_count", "gpu_models": [...]} | null,
          "boot": {"source": "pxe", "image": null,
                   "reported": {"target": "Pxe", "enabled": "Once" | "Continuous", "mode": "UEFI"}} | null,
          "inventory": {"mismatches": [], "unverified": ["serial", ...], "verified": [...]} | null
        }
      },
      "fabrics": {"<fabric>": {"kind", "complete", "partitions": {tenant: "0x1a2b"},
                               "artifacts": {"<file>": {"name", "path", "digest", "complete", "notes"}}}},
      "storage": {"<storage>": {"kind", "encrypted_at_rest", "replicas", "artifacts": {...}}},
      "pkeys": {"<tenant>": "0x1a2b"}
    }

No secret is ever part of it. Written with sorted keys: the same outputs give the same bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from aifactory.errors import ProvisionError
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState

OUTPUTS_FILE = "outputs.json"
OUTPUTS_SCHEMA = "aifactory.provision-outputs/v1"


def outputs_document(plan: SitePlan, stack_outputs: dict[str, Any]) -> dict[str, Any]:
    hosts = dict(stack_outputs.get("hosts") or {})
    for host in plan.hosts:
        hosts.setdefault(
            host.name,
            {"state": "not provisioned", "bmc": None, "system": None, "boot": None, "inventory": None},
        )
    return {
        "schema": OUTPUTS_SCHEMA,
        "site": plan.name,
        "plan_digest": plan.digest(),
        "hosts": hosts,
        "fabrics": stack_outputs.get("fabrics") or {},
        "storage": stack_outputs.get("storage") or {},
        "pkeys": stack_outputs.get("pkeys") or {},
    }


def write_outputs(path: Path, document: dict[str, Any]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(document, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_outputs(state: SiteState) -> dict[str, Any]:
    """For the inventory stage: the outputs of the last `aifactory provision`."""
    path = state.path("provision", OUTPUTS_FILE)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProvisionError(
            f"no provisioning outputs for site {state.site} ({path})",
            code="provision-outputs-missing",
            hint=f"run `aifactory provision` for site {state.site} first",
        ) from None
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"cannot read {path}: {exc}", code="provision-outputs-invalid") from None
    if not isinstance(document, dict) or document.get("schema") != OUTPUTS_SCHEMA:
        schema = document.get("schema") if isinstance(document, dict) else None
        raise ProvisionError(
            f"{path} has schema {schema!r}, expected {OUTPUTS_SCHEMA}",
            code="provision-outputs-invalid",
        )
    return document
