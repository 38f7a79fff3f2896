"""Evidence from the hash-chained logs: the operator log (every changing command) and the runtime's
decision logs (every access decision). No log is "not assessed"; a chain that breaks fails AU-9."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, LogReference, RuleResult, worst
from aifactory.chain import ChainHead, ChainReport, verify_chain
from aifactory.state import SiteState

INTEGRITY = "AU-9"
GENERATION = "AU-12"
TAMPERED = ("treat the log as tampered with: preserve it, find out who changed it, and compare it with "
            "its backup copy")


@dataclass(frozen=True)
class LogKind:
    kind: str  # what a LogReference calls it
    source: str  # the evidence section's name
    words: str  # in sentences

    def rule(self, suffix: str) -> str:
        return f"logs.{self.kind.replace('-', '_')}_{suffix}"


OPERATOR = LogKind("operator-log", "operator-log", "operator log")
DECISIONS = LogKind("decision-log", "decision-logs", "decision log")


def verify_any_log(path: Path) -> ChainReport:
    """The runtime's `verify_log` when installed (it knows decision-log specifics), else the chain."""
    try:
        module = importlib.import_module("aifactory.runtime.decisionlog")
    except ImportError:
        return verify_chain(path)
    verify_log = getattr(module, "verify_log", None)
    if verify_log is None:
        return verify_chain(path)
    return as_chain_report(path, verify_log(path))


def as_chain_report(path: Path, result: Any) -> ChainReport:
    """Whatever a verifier returned (a ChainReport, or an object/dict with the same fields)."""
    if isinstance(result, ChainReport):
        return result
    data = result.as_dict() if hasattr(result, "as_dict") else dict(result)
    head = data.get("head") or {}
    return ChainReport(str(data.get("path", path)), int(data.get("records", 0)),
                       ChainHead(int(head.get("seq", -1)), str(head.get("hash", ""))),
                       bool(data.get("ok")), tuple(str(p) for p in data.get("problems") or []))


def _chain_evidence(kind: LogKind, title: str, reports: Sequence[ChainReport], missing: str) -> Evidence:
    intact_title = f"The {kind.words} chain is intact"
    recorded_title = f"The {kind.words} holds records"
    if not reports:
        rules = ((INTEGRITY, RuleResult(kind.rule("chain"), intact_title, NOT_ASSESSED, kind.source, missing)),
                 (GENERATION, RuleResult(kind.rule("recorded"), recorded_title, NOT_ASSESSED, kind.source,
                                         missing)))
        return Evidence(kind.source, title, NOT_ASSESSED, missing, {"logs": []}, rules)
    intact = PASS if all(r.ok for r in reports) else FAIL
    records = sum(r.records for r in reports)
    recorded = PASS if records else NOT_ASSESSED
    rules = ((INTEGRITY, RuleResult(kind.rule("chain"), intact_title, intact, kind.source)),
             (GENERATION, RuleResult(kind.rule("recorded"), recorded_title, recorded, kind.source,
                                     "" if records else "no records yet")))
    findings = tuple(
        Finding(rule=kind.rule("chain"), title=intact_title, controls=(INTEGRITY,), severity="high",
                resource=f"log/{r.path}", message="; ".join(r.problems[:5]), remediation=TAMPERED,
                status=FAIL, source=kind.source)
        for r in reports if not r.ok)
    summary = (f"{len(reports)} log(s), {records} records; "
               + (f"{len(findings)} chain(s) broken" if findings else "every chain verifies"))
    references = tuple(LogReference(kind.kind, r.path, r.records, r.head.seq, r.head.hash, r.ok, r.problems)
                       for r in reports)
    return Evidence(kind.source, title, worst([intact, recorded]), summary,
                    {"logs": [r.as_dict() for r in reports]}, rules, findings, references)


def operator_log_evidence(state: SiteState) -> Evidence:
    path = state.operator_log
    reports = [state.verify_operator_log()] if path.exists() else []
    return _chain_evidence(OPERATOR, "Operator log", reports,
                           f"no operator log at {path}: no changing command has run on this site")


def decision_log_paths(state: SiteState, extra: Sequence[Path] = ()) -> list[Path]:
    """Decision logs under the site's runtime folder, then those given explicitly (no duplicates)."""
    runtime = state.path("runtime")
    found = sorted(runtime.rglob("*.jsonl")) if runtime.is_dir() else []
    out: list[Path] = []
    for path in [*found, *extra]:
        resolved = path.resolve()
        if resolved not in out:
            out.append(resolved)
    return out


def decision_log_evidence(state: SiteState, extra: Sequence[Path] = ()) -> Evidence:
    reports = [verify_any_log(path) for path in decision_log_paths(state, extra)]
    return _chain_evidence(DECISIONS, "Runtime decision logs", reports,
                           f"no decision logs under {state.path('runtime')} and none given with --decision-log")
