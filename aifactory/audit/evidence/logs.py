"""Evidence from the hash-chained logs: the operator log (every changing command) and the runtime's
decision logs (every access decision). A chain that breaks, a decision log no signed head covers, or
one shorter than the heads the control host collected fails AU-9; a decision log segment missing while
younger than the spec's retention fails AU-11.

Heads collected off a node live in the state folder, `heads/<host>/<log stem>.heads.jsonl`, with the
node's log key as first collected (`heads/<host>/allowed_signers`): a decision log whose records name
`host` is checked against that copy and that key (docs/audit.md, "Logs that cannot be rewritten")."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.allowed_signers import AllowedSigners
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, LogReference, RuleResult, worst
from aifactory.chain import (
    ChainHead,
    ChainReport,
    edge_records,
    iter_lines,
    read_head,
    segments_of,
    verify_chain,
)
from aifactory.errors import ChainError, SignerUntrusted, StateError, UsageError
from aifactory.headcopies import HEADS_FOLDER, collected_dir
from aifactory.state import OPERATOR_LOG, SiteState
from aifactory.trust.decisionlog import verify_heads_file, verify_log

INTEGRITY = "AU-9"
RETENTION = "AU-11"
GENERATION = "AU-12"
# Chained logs without signed heads, checked as plain chains: the operator log, and the tokens and
# certificates issued (`aifactory.trust.issuing`, in the runtime folder beside the decision logs).
CHAIN_ONLY = (OPERATOR_LOG, "issued-tokens.jsonl")
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
    """The decision log's `verify_log` (chain, signed heads, collected heads, retention); for the logs in
    CHAIN_ONLY, which have no signed heads, the plain chain is what there is to check."""
    if path.name in CHAIN_ONLY:
        if heads or trust or collected:
            raise UsageError(
                f"{path.name} has no signed heads", hint="leave out --heads, --trust and --collected"
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
    kind: LogKind,
    title: str,
    checks: Sequence[LogCheck],
    missing: str,
    *,
    retention: bool = False,
    copies: Sequence[tuple[str, list[str]]] = (),
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
    broken_copies = [(path, problems) for path, problems in copies if problems]
    intact = PASS if all(r.ok for r in reports) and not broken_copies else FAIL
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
        _finding(kind, INTEGRITY, intact_title, path, problems) for path, problems in broken_copies
    )
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
    if broken_copies:
        summary += f"; {len(broken_copies)} collected copies of signed heads do not verify"
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


def collected_heads(state: SiteState, log_path: Path) -> tuple[list[Path], Path | None, str]:
    """The heads the control host collected for this log, the node key it first collected (the trust
    to check with), and a note when they are not used. Found by the `host` the log's records name,
    and used when the log's own key (named in the heads beside it, or in `log-key/` beside it) is the
    collected one: the control host's own logs (scheduler decisions) may name a host whose node log
    is another log. A log with neither heads nor key beside it is compared with its host's copy."""
    host = _log_host(log_path)
    if not host:
        return [], None, ""
    try:
        folder = collected_dir(state, host)
    except StateError:
        return [], None, ""
    copy = folder / f"{log_path.stem}.heads.jsonl"
    signers = folder / "allowed_signers"
    if not signers.is_file():
        return ([copy] if copy.exists() else []), None, ""
    own = _log_signers(log_path)
    if own and not own & _key_fingerprints(signers):
        return (
            [],
            None,
            (
                f"not compared with the heads collected from {host}: this log's key is not the one "
                f"collected from {host} ({signers}); another log of that host, or a key replaced on it"
            ),
        )
    return ([copy] if copy.exists() else []), signers, ""


def _key_fingerprints(allowed_signers: Path) -> set[str]:
    try:
        lines = AllowedSigners.read(allowed_signers).lines
    except SignerUntrusted:
        return set()
    return {
        "SHA256:" + base64.b64encode(hashlib.sha256(line.key_blob).digest()).decode().rstrip("=")
        for line in lines
        if line.key_blob
    }


def _log_signers(log_path: Path) -> set[str]:
    """Key fingerprints the log names for itself: its heads' `signer`, its key file's keys."""
    found: set[str] = set()
    heads = log_path.with_name(f"{log_path.stem}.heads.jsonl")
    if heads.is_file():
        for line in iter_lines(heads):
            signer = (line.record or {}).get("signer")
            if isinstance(signer, str):
                found.add(signer)
    beside = log_path.parent / "log-key" / "allowed_signers"
    if beside.is_file():
        found |= _key_fingerprints(beside)
    return found


def collected_copies_evidence(state: SiteState) -> list[tuple[str, list[str]]]:
    """(path, problems) for each host's collected heads checked on their own against the host's
    collected key (a head signed by another key: the node's key was replaced after collection)."""
    root = state.path(HEADS_FOLDER)
    out: list[tuple[str, list[str]]] = []
    if not root.is_dir():
        return out
    for signers in sorted(root.glob("*/allowed_signers")):
        for heads in sorted(signers.parent.glob("*.heads.jsonl")):
            _count, problems = verify_heads_file(heads, signers)
            out.append((str(heads), list(problems)))
    return out


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
        copies, trust, note = collected_heads(state, path)
        check = verify_any_log(path, trust=trust, collected=copies, retention_days=retention_days)
        if note:
            check.detail.setdefault("warnings", []).append(note)
        checks.append(check)
    return _chain_evidence(
        DECISIONS,
        "Runtime decision logs",
        checks,
        f"no decision logs under {state.path('runtime')} and none given with --decision-log",
        retention=True,
        copies=collected_copies_evidence(state),
    )
