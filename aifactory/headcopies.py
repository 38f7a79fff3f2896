"""Signed heads collected off the nodes into the control host's state folder (AU-9).

A node signs the head of its decision log every few records (aifactory.trust.decisionlog) and writes
each signed head beside the log and to its `head_copies` (the runtime role's outbox). The control host
pulls that file at deploy and audit time and merges it here, append-only:

    <state>/heads/<host>/decisions.heads.jsonl   every signed head ever collected from the host
    <state>/heads/<host>/allowed_signers         the host's log key, as first collected (kept after)

A merge never drops a line: when the node's own copy was cut or rewritten, what was collected before
stays, and `aifactory audit verify-log` / the audit compare the log with it. What is protected is what
was collected: records written after the last collection and cut before the next are only bounded by
the node's own heads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aifactory.chain import iter_lines, parse_line
from aifactory.errors import LogLineError, StateError
from aifactory.state import SiteState

HEADS_FOLDER = "heads"
log = logging.getLogger(__name__)


def collected_dir(state: SiteState, host: str) -> Path:
    if not host or host in (".", "..") or "/" in host or "\0" in host:
        raise StateError(f"{host!r} cannot name a host folder", hint="use the inventory's host name")
    return state.path(HEADS_FOLDER, host)


def collected_signers(state: SiteState, hosts: Iterable[str]) -> tuple[Path, ...]:
    """The decision-log keys collected from these hosts (allowed_signers files), those there are: what a
    server's canary rollback record must verify against (aifactory.trust.canary)."""
    found = (collected_dir(state, host) / "allowed_signers" for host in hosts)
    return tuple(path for path in found if path.is_file())


@dataclass
class Collected:
    host: str
    file: str
    added: int = 0
    kept: int = 0
    missing_on_node: int = 0  # lines collected before that the node's copy no longer has
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "host": self.host,
            "file": self.file,
            "added": self.added,
            "kept": self.kept,
            "missing_on_node": self.missing_on_node,
            "problems": list(self.problems),
        }


def _append_lines(path: Path, lines: list[bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"".join(line + b"\n" for line in lines))
        os.fsync(fd)
    finally:
        os.close(fd)


def collect_heads(
    state: SiteState, host: str, fetched: Path, *, name: str | None = None, signers: Path | None = None
) -> Collected:
    """Merge a heads file fetched from `host` into the state folder (append-only; see the module
    docstring). Lines that are not JSON objects are not merged: verification of what was collected
    happens at verify time, against the collected key."""
    folder = collected_dir(state, host)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = folder / (name or fetched.name)
    result = Collected(host, str(target))
    have = [line.raw for line in iter_lines(target) if line.raw] if target.exists() else []
    known = set(have)
    fresh: list[bytes] = []
    seen: set[bytes] = set()
    for line in iter_lines(fetched):
        if not line.raw:
            continue
        try:
            parse_line(line.raw)
        except LogLineError as exc:
            result.problems.append(f"{fetched} line {line.number}: {exc}: not collected")
            continue
        seen.add(line.raw)
        if line.raw not in known:
            fresh.append(line.raw)
            known.add(line.raw)
    if fresh:
        _append_lines(target, fresh)
    result.added, result.kept = len(fresh), len(have)
    result.missing_on_node = sum(raw not in seen for raw in have)
    if signers is not None and signers.is_file():
        _collect_signers(folder / "allowed_signers", signers, result)
    return result


def _collect_signers(target: Path, fetched: Path, result: Collected) -> None:
    """Trust on first collection: the key stays what it was first seen as; a change is reported."""
    text = fetched.read_bytes()
    if not target.exists():
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(text)
    elif target.read_bytes() != text:
        result.problems.append(
            f"the log key of {result.host} changed since it was first collected; kept the first one "
            f"({target}): replace it by hand only if the node's key was rotated on purpose"
        )


def merge_incoming(state: SiteState) -> list[Collected]:
    """Merge what the runtime role fetched (`heads/<host>/incoming/`) into each host's collected heads;
    deploy calls it after every run. Problems (a changed log key) are logged and returned."""
    root = state.path(HEADS_FOLDER)
    results: list[Collected] = []
    if not root.is_dir():
        return results
    for incoming in sorted(root.glob("*/incoming")):
        fetched, signers = incoming / "decisions.heads.jsonl", incoming / "allowed_signers"
        host = incoming.parent.name
        if fetched.is_file():
            result = collect_heads(state, host, fetched, signers=signers)
        elif signers.is_file():  # a node whose log has no head yet: its key, for later
            result = Collected(host, str(signers))
            _collect_signers(collected_dir(state, host) / "allowed_signers", signers, result)
        else:
            continue
        for problem in result.problems:
            log.warning("collecting signed heads from %s: %s", result.host, problem)
        results.append(result)
    return results
