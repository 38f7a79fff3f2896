"""Evidence from the hash-chained logs: the operator log (every changing command) and the runtime's
decision logs (every access decision). A chain that breaks, a decision log no signed head covers, or
one shorter than the heads the control host collected fails AU-9; a decision log segment missing while
younger than the spec's retention fails AU-11.

Heads collected off a node live in the state folder, `heads/<host>/<log stem>.heads.jsonl`, with the
node's log key as first collected (`heads/<host>/allowed_signers`): a decision log whose records name
`host` is checked against that copy and that key (docs/audit.md, "Logs that cannot be rewritten")."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, LogReference, RuleResult, worst
from aifactory.chain import ChainHead, ChainReport, edge_records, read_head, segments_of, verify_chain
from aifactory.errors import ChainError, PrerequisiteError, StateError, UsageError
from aifactory.headcopies import collected_dir
from aifactory.state import OPERATOR_LOG, SiteState

INTEGRITY = "AU-9"
RETENTION = "AU-11"
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
    retention: tuple[str, ...] = ()  # AU-11: segments missing while younger than the retention

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.retention


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


def verify_any_log(
    path: Path,
    *,
    heads: Path | None = None,
    trust: Path | None = None,
    collected: Sequence[Path] = (),
    retention_days: int | None = None,
) -> LogCheck:
    """The runtime's `verify_log` (chain, signed heads, collected heads, retention) when installed,
    else the plain chain. The operator log has no signed heads: its chain is what there is to check."""
    if path.name == OPERATOR_LOG and (heads or trust or collected):
        raise UsageError(
            "the operator log has no signed heads", hint="leave out --heads, --trust and --collected"
        )
    verify_log = None if path.name == OPERATOR_LOG else _runtime_verifier()
    if verify_log is None:
        if heads or trust or collected:
            raise PrerequisiteError(
                "checking signed heads needs aifactory.runtime.decisionlog",
                hint="install aifactory with its runtime, or leave out --heads/--trust/--collected",
            )
        chain = verify_chain(path)
        return LogCheck(chain, chain.as_dict())
    result = verify_log(path, heads, trust, collected=collected, retention_days=retention_days)
    data = dict(result.as_dict())
    seq = int(data.get("last_seq", -1))
    problems = tuple(str(p) for p in data.get("problems") or [])
    chain = ChainReport(
        str(path),
        int(data.get("records", 0)),
        ChainHead(seq, _head_hash(path)),
        not problems,
        problems,
        int(data.get("first_seq", 0)),
        tuple(data.get("segments") or ()),
    )
    return LogCheck(chain, data, tuple(str(p) for p in data.get("retention_problems") or []))


def _finding(kind: LogKind, control: str, title: str, path: str, problems: Sequence[str]) -> Finding:
    return Finding(
        rule=kind.rule("chain" if control == INTEGRITY else "retention"),
        title=title,
        controls=(control,),
        severity="high",
        resource=f"log/{path}",
        message="; ".join(problems[:5]),
        remediation=TAMPERED,
        status=FAIL,
        source=kind.source,
    )


def _chain_evidence(
    kind: LogKind, title: str, checks: Sequence[LogCheck], missing: str, *, retention: bool = False
) -> Evidence:
    reports = [c.chain for c in checks]
    intact_title = f"The {kind.words} chain is intact"
    recorded_title = f"The {kind.words} holds records"
    kept_title = f"The {kind.words} keeps every segment younger than its retention"
    if not reports:
        rules: tuple[tuple[str, RuleResult], ...] = (
            (INTEGRITY, RuleResult(kind.rule("chain"), intact_title, NOT_ASSESSED, kind.source, missing)),
            (
                GENERATION,
                RuleResult(kind.rule("recorded"), recorded_title, NOT_ASSESSED, kind.source, missing),
            ),
        )
        if retention:
            rules += (
                (
                    RETENTION,
                    RuleResult(kind.rule("retention"), kept_title, NOT_ASSESSED, kind.source, missing),
                ),
            )
        return Evidence(kind.source, title, NOT_ASSESSED, missing, {"logs": []}, rules)
    intact = PASS if all(r.ok for r in reports) else FAIL
    kept = PASS if all(not c.retention for c in checks) else FAIL
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
    if retention:
        rules += ((RETENTION, RuleResult(kind.rule("retention"), kept_title, kept, kind.source)),)
    findings = tuple(_finding(kind, INTEGRITY, intact_title, r.path, r.problems) for r in reports if not r.ok)
    findings += tuple(
        _finding(kind, RETENTION, kept_title, c.chain.path, c.retention) for c in checks if c.retention
    )
    broken = sum(not r.ok for r in reports)
    short = sum(bool(c.retention) for c in checks)
    summary = f"{len(reports)} log(s), {records} records; " + (
        f"{broken} chain(s) broken" if broken else "every chain verifies"
    )
    if short:
        summary += f"; {short} missing a segment younger than the retention"
    references = tuple(
        LogReference(
            kind.kind,
            c.chain.path,
            c.chain.records,
            c.chain.head.seq,
            c.chain.head.hash,
            c.ok,
            c.chain.problems + c.retention,
        )
        for c in checks
    )
    return Evidence(
        kind.source,
        title,
        worst([intact, recorded, *([kept] if retention else [])]),
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


def collected_heads(state: SiteState, log_path: Path) -> tuple[list[Path], Path | None]:
    """The heads the control host collected for this log, and the node key it first collected (the
    trust to check them with): found by the `host` the log's records name."""
    host = _log_host(log_path)
    if not host:
        return [], None
    try:
        folder = collected_dir(state, host)
    except StateError:
        return [], None
    copy = folder / f"{log_path.stem}.heads.jsonl"
    signers = folder / "allowed_signers"
    return ([copy] if copy.exists() else []), (signers if signers.exists() else None)


def _log_host(log_path: Path) -> str | None:
    """The host a decision log belongs to: its records name it (the newest file that has any)."""
    for path in reversed(segments_of(log_path)):
        first, last = edge_records(path)
        for record in (last, first):
            host = (record or {}).get("host")
            if isinstance(host, str) and host:
                return host
    return None


def decision_log_evidence(
    state: SiteState, extra: Sequence[Path] = (), *, retention_days: int | None = None
) -> Evidence:
    checks = []
    for path in decision_log_paths(state, extra):
        copies, trust = collected_heads(state, path)
        checks.append(verify_any_log(path, trust=trust, collected=copies, retention_days=retention_days))
    return _chain_evidence(
        DECISIONS,
        "Runtime decision logs",
        checks,
        f"no decision logs under {state.path('runtime')} and none given with --decision-log",
        retention=True,
    )
