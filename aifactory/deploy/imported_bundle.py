"""What deploy takes from the imported bundle: its signed plan, and the host payloads of its version.

The host payloads (aifactory.deploy.payload) carry exactly what each host needs from the bundle:
manifest.json and its signature, the signed plan, the apt repository and the host platform's
runtime tree or the wheelhouse. The bundle role unpacks one on each host and checks the signature and
every hash there, so hosts verify what they install themselves.

Hosts verify with `ssh-keygen -Y verify` against an allowed_signers file: the site's trust file when
the admin gives one (`--trust`), else the site's own (<state>/bundle-key/allowed_signers) when it
vouches for the imported manifest's signer, otherwise one line for the key that signed it,
used only after the manifest's bytes were checked against the digest the import recorded (so the
key can vouch for nothing but the approved manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from aifactory import signing
from aifactory.bundle.import_record import last_import
from aifactory.bundle.importer import current_import
from aifactory.bundle.manifest import MANIFEST, NAMESPACE, SIGNATURE
from aifactory.deploy.payload import PLAN, WHEELS, host_payloads, site_store
from aifactory.errors import BundleError, Location, PlanFormatError, PrerequisiteError
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState

_IMPORT_HINT = "import one first: aifactory bundle import BUNDLE --trust allowed_signers"


@dataclass(frozen=True)
class DeployBundle:
    """The imported bundle as deploy uses it."""

    site: str
    version: str
    digest: str
    root: Path
    signer: str
    allowed_signers: Path
    # the signed manifest, as read and verified by prepare_bundle
    manifest: dict[str, Any] = field(default_factory=dict)
    # What the runtime is built from (runtime_identity): a version with the same one reuses the
    # runtime a host already has installed (a plan-only release: a resize)
    runtime_id: str = ""

    @property
    def runtime_trees(self) -> dict[str, Any]:
        """The signed manifest's contents.runtime_trees: pool platform tag -> prebuilt tree (archive,
        file listing, python version, target folder, packages); empty for bundles without trees."""
        return dict((self.manifest.get("contents") or {}).get("runtime_trees") or {})

    @property
    def plan_path(self) -> Path:
        return self.root / PLAN

    def plan(self) -> SitePlan:
        try:
            return SitePlan.load(self.plan_path)
        except PlanFormatError as exc:
            raise BundleError(
                f"the bundle's plan.json is not a site plan this aifactory reads: {exc.message}",
                hint="re-import the bundle, or build a new one from the site spec",
                location=Location(file=str(self.plan_path)),
            ) from None

    @property
    def has_apt(self) -> bool:
        return any(str(f["path"]).startswith("apt/") for f in self.manifest.get("files", []))

    def inventory_vars(self, plan: SitePlan, payload_folder: Path | None) -> dict[str, Any]:
        """The group var `aifactory_bundle` the roles read, with the host payloads the plan's hosts
        need written (or reused) in `payload_folder`; None for a playbook that carries no payload
        (the scan). runtime_trees and site_store only when there are some."""
        found: dict[str, Any] = {
            "version": self.version,
            "digest": self.digest,
            "root": str(self.root),
            "identity": self.signer,
            "allowed_signers": str(self.allowed_signers),
            "wheelhouse_subdir": WHEELS,
            "plan_subpath": PLAN,
            "apt": self.has_apt,
        }
        if payload_folder is not None:
            written = host_payloads(payload_folder, self.root, self.version, self.digest, self.manifest, plan)
            found["payloads"] = {key: p.inventory_vars() for key, p in written.items()}
        store = site_store(plan)
        if store is not None:
            found["site_store"] = store
        if self.runtime_trees:
            found["runtime_trees"] = self.runtime_trees
        if self.runtime_id:
            found["runtime_id"] = self.runtime_id
        return found


def describe_current_bundle(state: SiteState) -> dict[str, Any] | None:
    """Where the imported bundle is (for `aifactory inventory`), or None when none is imported."""
    imported = current_import(state)
    if imported is None:
        return None
    return {
        "version": imported.version,
        "digest": imported.digest,
        "root": str(imported.root),
        "wheelhouse": str(imported.wheelhouse),
        "plan": str(imported.plan_path),
    }


def prepare_bundle(state: SiteState, *, trust: Path | None = None) -> DeployBundle:
    """Check the imported bundle on the control host: its manifest, its signature with the trust the
    hosts get. The host payloads are written when the inventory is (DeployBundle.inventory_vars)."""
    imported = current_import(state)
    if imported is None:
        raise PrerequisiteError(f"site {state.site!r} has no imported bundle", hint=_IMPORT_HINT)
    root = Path(imported.root)
    manifest_bytes = _read(root / MANIFEST)
    found = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    if found != imported.digest:
        raise BundleError(
            f"the imported bundle's manifest changed since import "
            f"(expected {imported.digest}, found {found})",
            code="bundle-tampered",
            location=Location(file=str(root / MANIFEST)),
            hint="re-import the bundle from its media; deploy installs nothing from a changed bundle",
        )
    armored = _read(root / SIGNATURE).decode("ascii", errors="replace")
    folder = state.subdir("deploy")
    allowed = folder / "allowed_signers"
    signer = _import_signer(state)
    if trust is None:
        trust = _site_trust(state, manifest_bytes, armored, signer)
    _write_allowed_signers(allowed, armored, trust, signer)
    try:
        # hosts run `ssh-keygen -Y verify -I <signer>` on this file: check it exactly so here first
        signing.verify(
            manifest_bytes, armored, allowed_signers=allowed, namespace=NAMESPACE, principal=signer
        )
    except signing.SignatureError as exc:
        raise BundleError(
            f"the imported bundle's signature does not verify: {exc.message}",
            code="bundle-signature",
            location=Location(file=str(root / SIGNATURE)),
            hint="check that --trust names the site's allowed_signers, or re-import the bundle",
        ) from None
    manifest = json.loads(manifest_bytes)
    return DeployBundle(
        site=state.site,
        version=imported.version,
        digest=imported.digest,
        root=root,
        signer=signer,
        allowed_signers=allowed,
        manifest=manifest,
        runtime_id=runtime_identity(manifest, root),
    )


def runtime_identity(manifest: dict[str, Any], root: Path) -> str:
    """The digest of what a host's runtime is built from: every wheel of the signed manifest, by its
    file name and its RECORD (each file it installs, with its SHA-256). Two bundle versions with the
    same one install the same runtime (the plan, the apt repository and the version's name are not
    part of it, nor a wheel's zip timestamps: aifactory's own wheel is rebuilt with each bundle), so
    the runtime role keeps the one a host has instead of building it again under the new version's
    folder. A prebuilt tree is built from these wheels. "" (never reuse) when the bundle has no
    wheels or a wheel cannot be read here: the hosts' checks of the payload decide what installs."""
    wheels = sorted(str(f["path"]) for f in manifest["files"] if str(f["path"]).startswith("wheels/"))
    lines = []
    for path in wheels:
        record = _wheel_record(root / path)
        if record is None:
            return ""
        lines.append(f"{hashlib.sha256(record).hexdigest()}  {PurePosixPath(path).name}\n")
    if not lines:
        return ""
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def _wheel_record(wheel: Path) -> bytes | None:
    """The wheel's .dist-info/RECORD, or None when it is not a readable wheel that has one."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/RECORD")]
            return archive.read(names[0]) if len(names) == 1 else None
    except (OSError, zipfile.BadZipFile, KeyError):
        return None


def _site_trust(state: SiteState, manifest: bytes, armored: str, signer: str) -> Path | None:
    """The site's own bundle trust file (<state>/bundle-key/allowed_signers: the key `aifactory up`
    makes, and both keys while `aifactory rotate --what bundle-key` overlaps them) when it vouches for
    the imported manifest's signer; otherwise None (one line for that signer). Hosts then keep the
    trust a rotation gave them: a deploy in the overlap does not drop the old key, and after it the
    rotation's last rollout is what the next deploy finds on the hosts."""
    site_file = state.path("bundle-key", "allowed_signers")
    if not site_file.is_file():
        return None
    try:
        signing.verify(manifest, armored, allowed_signers=site_file, namespace=NAMESPACE, principal=signer)
    except signing.SignatureError:
        return None
    return site_file


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(
            f"cannot read {path.name} of the imported bundle: {exc.strerror}",
            location=Location(file=str(path)),
            hint="re-import the bundle",
        ) from None


def _import_signer(state: SiteState) -> str:
    """The principal the import verified the bundle's signature for."""
    record = last_import(state)
    signer = record.signer if record is not None else ""
    if not signer or any(c.isspace() for c in signer) or signer.startswith("*"):
        raise BundleError(
            f"the bundle import record names no usable signer ({signer!r})",
            code="bundle-signature",
            hint=_IMPORT_HINT,
        )
    return signer


def _write_allowed_signers(target: Path, armored: str, trust: Path | None, signer: str) -> None:
    if trust is not None:
        text = _read(trust).decode()
    else:
        try:
            key = signing.parse_signature(armored).public_key
        except signing.SignatureError as exc:
            raise BundleError(
                f"the imported bundle's signature is unusable: {exc.message}",
                code="bundle-signature",
                hint="re-import the bundle",
            ) from None
        text = f'{signer} namespaces="{NAMESPACE}" {signing.public_key_line(key)}\n'
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
