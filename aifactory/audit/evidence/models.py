"""Evidence from the model registry: the model versions servers load (each model's champion), their
OpenSSF model signatures checked against the site's model-signing key, and the signed promotion
records; refused versions and promotion records that do not verify are findings (SI-7, CM-3)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, RuleResult
from aifactory.trust.models import ALIASES, Inspection, Inspector, ModelTrust

SOURCE = "models"
SIGNED = "models.served-version-signed"
PROMOTED = "models.promotions-signed"
INTEGRITY = "SI-7"  # software, firmware and information integrity: what serves is what the site signed
CHANGE = "CM-3"  # configuration change control: who promoted which version, when, signed


def model_evidence(models: Sequence[tuple[str, Path]], trust: Path | None) -> Evidence:
    """One section for the models given (name, folder as this machine reaches it)."""
    if not models or trust is None:
        return Evidence(SOURCE, "Signed models", NOT_ASSESSED, "no model registry was given to the audit")
    described: list[dict[str, Any]] = []
    findings: list[Finding] = []
    for name, folder in models:
        inspection = Inspector(folder, ModelTrust(trust)).inspect()
        described.append(_describe(name, inspection))
        findings += _findings(name, inspection)
    served = [m for m in described if m["champion"]]
    signed_status = PASS if served else NOT_ASSESSED
    if any(f.rule == SIGNED for f in findings):
        signed_status = FAIL
    promoted_status = FAIL if any(f.rule == PROMOTED for f in findings) else signed_status
    rules = (
        (
            INTEGRITY,
            RuleResult(SIGNED, "the version each model serves is signed by the site", signed_status, SOURCE),
        ),
        (CHANGE, RuleResult(PROMOTED, "every promotion record verifies and chains", promoted_status, SOURCE)),
    )
    summary = (
        f"{len(served)} of {len(described)} models have a signed, promoted champion; "
        f"{sum(len(m['history']) for m in described)} promotion records"
    )
    status = FAIL if findings else (PASS if served else NOT_ASSESSED)
    detail = {"trust": str(trust), "models": described}
    return Evidence(SOURCE, "Signed models", status, summary, detail, rules, tuple(findings))


def _describe(name: str, inspection: Inspection) -> dict[str, Any]:
    aliases: dict[str, Any] = {}
    for alias in ALIASES:
        promotion = inspection.promotions.alias(alias)
        version = inspection.version(alias)
        aliases[alias] = (
            {
                "digest": promotion.digest,
                "signature": "verified" if version else "refused",
                "key": version.provenance.get("key") if version else None,
                "step": version.provenance.get("step") if version else None,
                "job": version.provenance.get("job") if version else None,
                "dataset": version.provenance.get("dataset") if version else None,
                "promoted": {"time": promotion.time, "by": promotion.by, "seq": promotion.seq},
            }
            if promotion
            else None
        )
    return {
        "model": name,
        "champion": inspection.champion.digest if inspection.champion else None,
        "aliases": aliases,
        "history": [
            {
                "seq": p.seq,
                "alias": p.alias,
                "digest": p.digest,
                "time": p.time,
                "by": p.by,
                "reason": p.reason,
            }
            for p in inspection.promotions.records
        ],
        "refused": [r.as_dict() for r in inspection.refused],
    }


def _findings(name: str, inspection: Inspection) -> list[Finding]:
    """A champion that does not verify, and promotion records that do not: unsigned or unpromoted
    things beside the champion are not findings (servers refuse them, as they should; they are listed)."""
    problems: list[tuple[str, str, str, str]] = [
        (PROMOTED, CHANGE, r.path, f"{r.reason}: {r.detail}")
        for r in inspection.refused
        if r.reason == "bad-promotion"
    ]
    champion = inspection.promotions.alias("champion")
    if champion is not None and inspection.champion is None:
        reasons = "; ".join(
            f"{r.reason}: {r.detail}" for r in inspection.refused if champion.digest[7:] in r.path
        )
        problems.append((SIGNED, INTEGRITY, champion.digest, reasons or "the champion does not verify"))
    return [
        Finding(
            rule=rule,
            title="a promotion record does not verify"
            if rule == PROMOTED
            else "the champion does not verify",
            controls=(control,),
            severity="high",
            resource=f"model/{name}/{where}",
            message=message,
            remediation="restore the registry from the site's backup, or sign and promote the version again",
            status=FAIL,
            source=SOURCE,
        )
        for rule, control, where, message in problems
    ]
