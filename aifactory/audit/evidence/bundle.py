"""Evidence from the offline bundle: the imported bundle is checked again at audit time.

- its manifest is still the one verified at import (digest recorded then), and, with --bundle-trust,
  its SSHSIG signature verifies against that trust file;
- every payload file the manifest lists is present with its SHA-256 (SI-7, CM-14);
- it was built for the site's current plan (CM-2: a spec changed since the bundle was built means
  what is deployed is not what the spec says).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aifactory import signing
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, RuleResult
from aifactory.audit.sign import file_digest
from aifactory.bundle.importer import ImportedBundle, current_import
from aifactory.bundle.manifest import NAMESPACE
from aifactory.errors import AifactoryError
from aifactory.state import SiteState

SOURCE = "bundle"
INTEGRITY = ("SI-7", "CM-14")
VERIFIED = ("bundle.verified", "The imported bundle is intact: its signed manifest and every file digest")
MATCHES_PLAN = ("bundle.matches_plan", "The imported bundle was built for the site's current plan")
DO_NOT_DEPLOY = (
    "do not deploy from this import: import a bundle you received intact again with "
    "`aifactory bundle import`, and find out what changed the files"
)


@dataclass
class BundleCheck:
    problems: list[str]
    files: int = 0
    signature: str = "not re-checked: give --bundle-trust to check it against a trust file"


def _not_assessed(note: str) -> Evidence:
    rules = tuple((c, RuleResult(*VERIFIED, NOT_ASSESSED, SOURCE, note)) for c in INTEGRITY)
    rules += (("CM-2", RuleResult(*MATCHES_PLAN, NOT_ASSESSED, SOURCE, note)),)
    return Evidence(SOURCE, "Offline bundle", NOT_ASSESSED, note, {}, rules)


def check_import(imported: ImportedBundle, *, namespace: str, trust: Path | None) -> BundleCheck:
    """Re-check an imported bundle folder against the manifest digest recorded when it was imported."""
    root = Path(imported.root)
    check = BundleCheck([])
    manifest_path = root / "manifest.json"
    try:
        manifest_bytes = manifest_path.read_bytes()
    except OSError as exc:
        check.problems.append(f"cannot read {manifest_path}: {exc.strerror}")
        return check
    if "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() != imported.digest:
        check.problems.append("manifest.json is not the manifest verified at import (its digest changed)")
        return check
    if trust is not None:
        try:
            signer = signing.verify(
                manifest_bytes,
                (root / "manifest.json.sig").read_text(),
                allowed_signers=trust,
                namespace=namespace,
            )
            check.signature = f"verifies, signed by {signer}"
        except (OSError, signing.SignatureError) as exc:
            check.problems.append(f"manifest.json.sig: {getattr(exc, 'message', exc)}")
    for entry in imported.manifest().files:
        path = root / entry.path
        if not path.is_file():
            check.problems.append(f"{entry.path} is missing")
        elif file_digest(path) != entry.sha256:
            check.problems.append(f"{entry.path} was changed after import (its SHA-256 does not match)")
        if len(check.problems) >= 20:
            check.problems.append("... more problems not shown")
            break
        check.files += 1
    return check


def bundle_evidence(
    state: SiteState, plan_digest: str, *, trust: Path | None = None
) -> tuple[Evidence, str | None]:
    """(evidence, the imported bundle's digest or None), for the site whose plan has `plan_digest`."""
    try:
        imported = current_import(state)
    except AifactoryError as error:
        imported, problem = None, error.message
    else:
        problem = ""
    if imported is None and not problem:
        return _not_assessed("no bundle has been imported on this site"), None
    if imported is None:
        finding = Finding(
            *VERIFIED, INTEGRITY, "critical", f"site/{state.site}", problem, DO_NOT_DEPLOY, FAIL, SOURCE
        )
        rules = tuple((c, RuleResult(*VERIFIED, FAIL, SOURCE)) for c in INTEGRITY)
        return Evidence(SOURCE, "Offline bundle", FAIL, problem, {}, rules, (finding,)), None
    return _assess(imported, plan_digest, NAMESPACE, trust), str(imported.digest)


def _assess(imported: ImportedBundle, plan_digest: str, namespace: str, trust: Path | None) -> Evidence:
    check = check_import(imported, namespace=namespace, trust=trust)
    resource = f"bundle/{imported.version}"
    findings = [
        Finding(*VERIFIED, INTEGRITY, "critical", resource, problem, DO_NOT_DEPLOY, FAIL, SOURCE)
        for problem in check.problems
    ]
    intact = FAIL if check.problems else PASS
    built_for = imported.manifest().plan_digest if not check.problems else ""
    matches = PASS if built_for == plan_digest else FAIL if built_for else NOT_ASSESSED
    if matches == FAIL:
        findings.append(
            Finding(
                *MATCHES_PLAN,
                ("CM-2",),
                "medium",
                resource,
                f"the bundle was built for plan {built_for}; the site's plan is now {plan_digest}",
                "build and import a bundle from the current spec, then deploy it",
                FAIL,
                SOURCE,
            )
        )
    rules = tuple((c, RuleResult(*VERIFIED, intact, SOURCE)) for c in INTEGRITY)
    rules += (("CM-2", RuleResult(*MATCHES_PLAN, matches, SOURCE)),)
    detail = {
        "root": str(imported.root),
        "version": imported.version,
        "digest": imported.digest,
        "files_checked": check.files,
        "signature": check.signature,
        "built_for_plan": built_for,
        "problems": check.problems,
    }
    summary = f"bundle {imported.version}: {check.files} files checked; " + (
        "intact" if not check.problems else f"{len(check.problems)} problem(s)"
    )
    status = FAIL if FAIL in (intact, matches) else PASS
    return Evidence(SOURCE, "Offline bundle", status, summary, detail, rules, tuple(findings))
