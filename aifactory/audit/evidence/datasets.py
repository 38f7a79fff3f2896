"""Evidence from the datasets' versions: every version's signed manifest, its files and the signed,
chained lineage checked against the site's key (SI-7), and every erasure listed: when, by whom, on
whose authority, how many records and which files of which versions, never what they held (AU-10).
Anything that does not verify is a finding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, RuleResult
from aifactory.data.versions import describe_history, read_history
from aifactory.trust.models import ModelTrust

SOURCE = "datasets"
VERIFIED = "datasets.versions-verify"
ERASURES = "datasets.erasures-signed"
INTEGRITY = "SI-7"
NON_REPUDIATION = "AU-10"


def dataset_evidence(datasets: Sequence[tuple[str, Path]], trust: Path | None) -> Evidence:
    """One section for the datasets given (name, folder as this machine reaches it)."""
    if not datasets or trust is None:
        return Evidence(SOURCE, "Dataset versions", NOT_ASSESSED, "no dataset folder was given to the audit")
    described: list[dict[str, Any]] = []
    findings: list[Finding] = []
    for name, folder in datasets:
        history = read_history(folder, ModelTrust(trust), dataset=name)
        described.append(
            {
                "dataset": name,
                "folder": str(folder),
                "verified": history.ok,
                "versions": describe_history(history),
                "erasures": history.as_dict()["erasures"],
                "problems": list(history.problems),
            }
        )
        findings += [
            Finding(
                rule=VERIFIED,
                title="a dataset version does not verify",
                controls=(INTEGRITY,),
                severity="high",
                resource=f"dataset/{name}",
                message=problem,
                remediation="restore the dataset's versions folder from the site's backup",
                status=FAIL,
                source=SOURCE,
            )
            for problem in history.problems
        ]
    versions = sum(len(d["versions"]) for d in described)
    erasures = sum(len(d["erasures"]) for d in described)
    status = FAIL if findings else (PASS if versions else NOT_ASSESSED)
    erasure_status = FAIL if findings else (PASS if erasures else NOT_ASSESSED)
    rules = (
        (
            INTEGRITY,
            RuleResult(VERIFIED, "every dataset version, its files and lineage verify", status, SOURCE),
        ),
        (
            NON_REPUDIATION,
            RuleResult(
                ERASURES,
                "every erasure is a signed lineage record with its authority",
                erasure_status,
                SOURCE,
            ),
        ),
    )
    summary = f"{versions} versions of {len(described)} datasets; {erasures} erasures"
    detail = {"trust": str(trust), "datasets": described}
    return Evidence(SOURCE, "Dataset versions", status, summary, detail, rules, tuple(findings))
