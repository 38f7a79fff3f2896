"""Evidence from the hash-chained logs: the operator log (every changing command) and the runtime's
decision logs (every access decision). No log is "not assessed"; a chain that breaks fails AU-9."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, LogReference, RuleResult, worst
from aifactory.chain import ChainHead, ChainReport, read_head, verify_chain
from aifactory.errors import ChainError, PrerequisiteError, UsageError
from aifactory.state import OPERATOR_LOG, SiteState

INTEGRITY = "AU-9"
GENERATION = "AU-12"
TAMPERED = (
    "treat the log as tampered with: preserve it, find out who changed it, and compare it with "
    "its backup copy"
)


@dataclass(frozen=True)
class LogKind:
    kind: str  # what a LogReference calls it
    source: str  # the evidence section's name
    words: str  # in sentences

    def rule(self, suffix: str) -> str:
        return f"logs.{self.kind.replace('-', '_')}_{suffix}"


OPERATOR = LogKind("operator-log", "operator-log", "operator log")
DECISIONS = LogKind("decision-log", "decision-logs", "decision log")


@dataclass(frozen=True)
class LogCheck:
    """A log's chain verdict, plus everything the verifier said (signed heads, warnings)."""

    chain: ChainReport
    detail: dict[str, Any]


def _runtime_verifier() -> Any:
    try:
        module = importlib.import_module("aifactory.runtime.decisionlog")
    except ImportError:
        return None
    return getattr(module, "verify_log", None)


def _head_hash(path: Path) -> str:
    try:
        return read_head(path).hash
    except ChainError:
        return ""


def verify_any_log(path: Path, *, heads: Path | None = None, trust: Path | None = None) -> LogCheck:
    """The runtime's `verify_log` (chain and signed heads) when installed, else the plain chain.
    The operator log has no signed heads: its chain is what there is to check."""
    if path.name == OPERATOR_LOG and (heads or trust):
        raise UsageError("the operator log has no signed heads", hint="leave out --heads and --trust")
    verify_log = None if path.name == OPERATOR_LOG else _runtime_verifier()
    if verify_log is None:
        if heads or trust:
            raise PrerequisiteError(
                "checking signed heads needs aifactory.runtime.decisionlog",
                hint="install aifactory with its runtime, or leave out --heads/--trust",
            )
        chain = verify_chain(path)
        return LogCheck(chain, chain.as_dict())
    result = verify_log(path, heads, trust)
    data = dict(result.as_dict())
    seq = int(data.get("last_seq", -1))
    chain = ChainReport(
        str(path),
        int(data.get("records", 0)),
        ChainHead(seq, _head_hash(path)),
        bool(data.get("ok")),
        tuple(str(p) for p in data.get("problems") or []),
    )
    return LogCheck(chain, data)


def _chain_evidence(kind: LogKind, title: str, checks: Sequence[LogCheck], missing: str) -> Evidence:
    reports = [c.chain for c in checks]
    intact_title = f"The {kind.words} chain is intact"
    recorded_title = f"The {kind.words} holds records"
    if not reports:
        rules = (
            (INTEGRITY, RuleResult(kind.rule("chain"), intact_title, NOT_ASSESSED, kind.source, missing)),
            (
                GENERATION,
                RuleResult(kind.rule("recorded"), recorded_title, NOT_ASSESSED, kind.source, missing),
            ),
        )
        return Evidence(kind.source, title, NOT_ASSESSED, missing, {"logs": []}, rules)
    intact = PASS if all(r.ok for r in reports) else FAIL
    records = sum(r.records for r in reports)
    recorded = PASS if records else NOT_ASSESSED
    rules = (
        (INTEGRITY, RuleResult(kind.rule("chain"), intact_title, intact, kind.source)),
        (
            GENERATION,
            RuleResult(
                kind.rule("recorded"),
                recorded_title,
                recorded,
                kind.source,
                "" if records else "no records yet",
            ),
        ),
    )
    findings = tuple(
        Finding(
            rule=kind.rule("chain"),
            title=intact_title,
            controls=(INTEGRITY,),
            severity="high",
            resource=f"log/{r.path}",
            message="; ".join(r.problems[:5]),
            remediation=TAMPERED,
            status=FAIL,
            source=kind.source,
        )
        for r in reports
        if not r.ok
    )
    summary = f"{len(reports)} log(s), {records} records; " + (
        f"{len(findings)} chain(s) broken" if findings else "every chain verifies"
    )
    references = tuple(
        LogReference(kind.kind, r.path, r.records, r.head.seq, r.head.hash, r.ok, r.problems) for r in reports
    )
    return Evidence(
        kind.source,
        title,
        worst([intact, recorded]),
        summary,
        {"logs": [{**c.chain.as_dict(), "verifier": c.detail} for c in checks]},
        rules,
        findings,
        references,
    )


def operator_log_evidence(state: SiteState) -> Evidence:
    path = state.operator_log
    checks = []
    if path.exists():
        chain = state.verify_operator_log()
        checks.append(LogCheck(chain, chain.as_dict()))
    return _chain_evidence(
        OPERATOR,
        "Operator log",
        checks,
        f"no operator log at {path}: no changing command has run on this site",
    )


def decision_log_paths(state: SiteState, extra: Sequence[Path] = ()) -> list[Path]:
    """Decision logs under the site's runtime folder, then those given explicitly (no duplicates)."""
    runtime = state.path("runtime")
    found = (
        sorted(p for p in runtime.rglob("*.jsonl") if not p.name.endswith(".heads.jsonl"))
        if runtime.is_dir()
        else []
    )
    out: list[Path] = []
    for path in [*found, *extra]:
        resolved = path.resolve()
        if resolved not in out:
            out.append(resolved)
    return out


def decision_log_evidence(state: SiteState, extra: Sequence[Path] = ()) -> Evidence:
    checks = [verify_any_log(path) for path in decision_log_paths(state, extra)]
    return _chain_evidence(
        DECISIONS,
        "Runtime decision logs",
        checks,
        f"no decision logs under {state.path('runtime')} and none given with --decision-log",
    )
