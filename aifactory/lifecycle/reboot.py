"""Whether a change of version needs its hosts restarted, decided from the two bundles' signed
manifests (the version the hosts run, the target), before anything changes.

A new kernel, kernel module, GPU driver, firmware or CPU microcode only takes effect after a restart:
installing the package is not enough, and a health gate run before the restart would pass on the old
kernel. The packages that count are REBOOT_PACKAGES (one list, here, documented in
docs/operations.md): a package whose name matches one of its patterns and whose version differs
between the two bundles (added or removed counts) makes the change need a reboot.

The versions come from the manifest alone: each Debian package of the bundle's apt repository is a
`deb` file entry named `apt/<name>_<version>_<arch>.deb` (as `apt-get download` names it, the
epoch's colon written `%3a`), covered by the manifest's signature.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aifactory.bundle.manifest import MANIFEST, Manifest
from aifactory.errors import UpgradeError
from aifactory.plan.model import SitePlan

# (pattern, why a new version needs a restart). fnmatch patterns over Debian package names.
REBOOT_PACKAGES: tuple[tuple[str, str], ...] = (
    ("linux-image-*", "the kernel runs only after a restart"),
    ("linux-modules-*", "kernel modules load with their kernel"),
    ("nvidia-kernel-*", "the GPU driver's kernel module"),
    ("nvidia-driver*", "the GPU driver: kernel module and user space must match"),
    ("nvidia-*-dkms", "a GPU kernel module built for the running kernel"),
    ("nvidia-open*", "the open GPU kernel modules"),
    ("cuda-drivers*", "CUDA's driver packages (the kernel module among them)"),
    ("firmware-*", "device firmware loads when the device starts"),
    ("*-microcode", "CPU microcode loads at boot"),
)


@dataclass(frozen=True)
class PackageChange:
    name: str
    before: str | None  # None: not in the bundle the hosts run
    after: str | None  # None: not in the target bundle

    def __str__(self) -> str:
        return f"{self.name} {self.before or '(none)'} -> {self.after or '(none)'}"


@dataclass(frozen=True)
class RebootDecision:
    """The packages that make the change need a reboot (none: no reboot)."""

    changes: tuple[PackageChange, ...] = ()

    @property
    def needed(self) -> bool:
        return bool(self.changes)

    def render(self) -> str:
        """The line the dry run and the plan show."""
        if not self.needed:
            return "reboot: no"
        return f"reboot: yes ({', '.join(str(c) for c in self.changes)})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "needed": self.needed,
            "packages": [{"name": c.name, "from": c.before, "to": c.after} for c in self.changes],
        }


def needs_restart(package: str) -> bool:
    """Whether a new version of this Debian package takes effect only after a restart."""
    return any(fnmatch.fnmatchcase(package, pattern) for pattern, _ in REBOOT_PACKAGES)


def package_versions(manifest: Manifest) -> dict[str, str]:
    """Debian package name -> version, from the manifest's `deb` entries."""
    found: dict[str, str] = {}
    for entry in manifest.files:
        if entry.kind != "deb":
            continue
        stem = entry.path.rsplit("/", 1)[-1].removesuffix(".deb")
        parts = stem.split("_")
        if len(parts) == 3 and parts[0] and parts[1]:
            found[parts[0]] = unquote(parts[1])
    return found


def imported_manifest(root: Path) -> Manifest | None:
    """The manifest of a bundle imported at `root` (checked when it was imported); None when the
    folder was cleaned up."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    return Manifest.parse(path.read_bytes(), source=str(root))


def reboot_decision(running: Manifest | None, target: Manifest) -> RebootDecision:
    """Whether going from the bundle `running` to `target` needs the hosts restarted (the same either
    way: a revert takes the same packages back). Without the running bundle's manifest every such
    package of the target counts as new: a reboot too many, never one too few."""
    before = package_versions(running) if running is not None else {}
    after = package_versions(target)
    changes = tuple(
        PackageChange(name, before.get(name), after.get(name))
        for name in sorted(set(before) | set(after))
        if needs_restart(name) and before.get(name) != after.get(name)
    )
    return RebootDecision(changes)


def require_bmcs(plan: SitePlan, hosts: Sequence[str], decision: RebootDecision) -> None:
    """A change that needs a reboot restarts every host through its BMC: refuse it up front, naming
    the hosts the plan gives no BMC."""
    bmcs = {h.name for h in plan.hosts if h.bmc is not None}
    missing = [name for name in hosts if name not in bmcs]
    if decision.needed and missing:
        raise UpgradeError(
            f"this change needs a reboot ({', '.join(str(c) for c in decision.changes)}) and "
            f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no BMC in the plan to restart "
            "through",
            code="upgrade-no-bmc",
            hint="give the pool a bmc: in the site spec, or run with --no-reboot and restart the hosts "
            "yourself (the new kernel or driver runs only after that; the record says so)",
        )
