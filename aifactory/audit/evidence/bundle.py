"""Evidence from the offline bundle: the imported bundle is verified again (signature, every file's
digest) at audit time. SI-7 (integrity of software) and CM-14 (signed components)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, RuleResult
from aifactory.errors import AifactoryError
from aifactory.state import SiteState

SOURCE = "bundle"
CONTROLS = ("SI-7", "CM-14")
RULE = ("bundle.verified", "The imported bundle's signature and every file digest verify")


def _rules(status: str, note: str = "") -> tuple[tuple[str, RuleResult], ...]:
    return tuple((control, RuleResult(*RULE, status, SOURCE, note)) for control in CONTROLS)


def _not_assessed(note: str) -> Evidence:
    return Evidence(SOURCE, "Offline bundle", NOT_ASSESSED, note, {}, _rules(NOT_ASSESSED, note))


def _report_dict(result: Any) -> dict[str, Any]:
    if hasattr(result, "as_dict"):
        return dict(result.as_dict())
    return {"ok": bool(getattr(result, "ok", False))}


def bundle_evidence(state: SiteState, *, trust: Path | None = None) -> tuple[Evidence, str | None]:
    """(evidence, the imported bundle's digest or None)."""
    try:
        module = importlib.import_module("aifactory.bundle")
        current_import = module.current_import
        verify_bundle = module.verify_bundle
    except (ImportError, AttributeError):
        return _not_assessed("this installation cannot verify bundles (aifactory.bundle is missing)"), None
    imported = current_import(state)
    if imported is None:
        return _not_assessed("no bundle has been imported on this site"), None
    digest = str(getattr(imported, "digest", "")) or None
    version = str(getattr(imported, "version", ""))
    detail: dict[str, Any] = {"root": str(imported.root), "version": version, "digest": digest}
    try:
        result = verify_bundle(imported.root, trust=trust) if trust else verify_bundle(imported.root)
    except AifactoryError as error:
        return _failed(detail, error.message), digest
    detail["verification"] = _report_dict(result)
    if not detail["verification"].get("ok", False):
        problems = detail["verification"].get("problems") or ["verification did not pass"]
        return _failed(detail, "; ".join(str(p) for p in problems[:5])), digest
    summary = f"bundle {version} ({digest}) verifies"
    return Evidence(SOURCE, "Offline bundle", PASS, summary, detail, _rules(PASS)), digest


def _failed(detail: dict[str, Any], message: str) -> Evidence:
    finding = Finding(*RULE, CONTROLS, "critical", f"bundle/{detail.get('version') or detail['root']}",
                      message, "do not deploy from this bundle: import a bundle you received intact and verify "
                      "it with `aifactory bundle verify`", FAIL, SOURCE)
    return Evidence(SOURCE, "Offline bundle", FAIL, message, detail, _rules(FAIL), (finding,))
