"""The runtime's decision log: every authorization decision, hash-chained, durable, with signed heads.

AU-2/AU-3/AU-12 (every decision, allow or deny, is recorded with who, what, which resource, the
reason codes and the decision id), AU-9 (integrity: the hash chain of `aifactory.chain`, plus
signed heads, plus copies of the heads off the node), AU-10 (non-repudiation: heads are signed with
the node's Ed25519 key in namespace `aifactory-log`, verifiable with `ssh-keygen -Y verify`) and AU-11
(retention: segments younger than the retention must all be there).

Durability: `DecisionLog.record()` returns only after the record is written and fsync'd. Concurrent
callers are group-committed by one writer thread: one write and one fsync for all records waiting.

Signed heads: after a commit, the writer signs the log head (seq, hash) when `sign_every` records
(default 100) are unsigned, or when the oldest unsigned record is `sign_interval` seconds old
(default 5 s), and at shutdown. Each signed head is appended (fsync'd) to the heads file
(`<log stem>.heads.jsonl` beside the log) and to every `head_copies` file; the control host collects
them (docs/audit.md, "Logs that cannot be rewritten") so that whoever controls this host cannot
rewrite both. `verify_log` fails a non-empty log that no signed head covers, and a log whose records
run more than `sign_every` past its last signed head (the *unsigned tail*: the only records that can
be cut off the end unnoticed; at most `sign_every` records, or `sign_interval` seconds of them).

Rotation: with `rotate_bytes`, the live file is renamed to a segment once it reaches that size and the
chain runs on in a new file (`aifactory.chain`). Nothing here deletes a segment: archiving segments
older than the retention is the site's choice; a younger one missing fails AU-11.

Disk: the writer checks the free space of the log's file system at most once a second. Below
`disk_warn_free` (default 10 %) it logs a warning and `disk_state` is "low"; below `disk_shed_free`
(default 5 %) it is "critical" and the server sheds new requests (503 `log-disk-full`) so that the log
is never the thing that runs out: a request the log cannot record would be denied.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aifactory.chain import (
    CANON,
    CANONS,
    ChainWriter,
    Line,
    canonical_bytes,
    edge_records,
    iter_lines,
    read_head,
    segments_of,
    verify_chain,
)
from aifactory.errors import AifactoryError, ChainError
from aifactory.signing import (
    SignatureError,
    fingerprint,
    generate_keypair,
    load_private_key,
    sign,
    verify,
)

LOG_NAMESPACE = "aifactory-log"
HEAD_SCHEMA = "aifactory.loghead/v1"
DEFAULT_RETENTION_DAYS = 183  # six months: the EU AI Act's minimum for deployers' logs (Art. 26(6))
DISK_WARN_FREE = 0.10
DISK_SHED_FREE = 0.05
DISK_CHECK_INTERVAL = 1.0
log = logging.getLogger(__name__)


def heads_path_for(log_path: Path) -> Path:
    return log_path.with_name(f"{log_path.stem}.heads.jsonl")


def log_key_dir(log_path: Path) -> Path:
    return log_path.parent / "log-key"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _append_durably(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Pending:
    payload: Mapping[str, Any]
    future: Future[dict[str, Any]]


def _ensure_log_key(key_dir: Path, identity: str) -> None:
    """Make the log's signing key at first start, once. Several launchers may start at the same moment
    on one runtime folder (the training launchers of a job's hosts on shared storage): one makes the
    key under the folder's lock while the others wait, then all use it. Without the lock the loser of
    the race died on the half-made key and its job's other hosts waited at the rendezvous."""
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(key_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not (key_dir / "signing_key").exists():
            generate_keypair(key_dir, identity=identity, namespaces=LOG_NAMESPACE)
    finally:
        os.close(fd)  # releases the lock


class DecisionLog:
    """Append-only decision log with group commit and periodic signed heads; thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        key_dir: Path | None = None,
        heads_path: Path | None = None,
        head_copies: Sequence[Path] = (),
        sign_every: int = 100,
        sign_interval: float = 5.0,
        identity: str | None = None,
        rotate_bytes: int | None = None,
        retention_days: int = DEFAULT_RETENTION_DAYS,
        disk_warn_free: float = DISK_WARN_FREE,
        disk_shed_free: float = DISK_SHED_FREE,
    ) -> None:
        if sign_every < 1 or sign_interval <= 0:
            raise AifactoryError("sign_every must be >= 1 and sign_interval > 0", code="usage")
        if retention_days < 1 or not 0 <= disk_shed_free <= disk_warn_free < 1:
            raise AifactoryError(
                "retention_days must be >= 1 and 0 <= disk_shed_free <= disk_warn_free < 1", code="usage"
            )
        self.path = path
        self.heads_path = heads_path or heads_path_for(path)
        self.head_copies = tuple(head_copies)
        self.sign_every = sign_every
        self.sign_interval = sign_interval
        self.retention_days = retention_days
        self.disk_warn_free = disk_warn_free
        self.disk_shed_free = disk_shed_free
        self.host = socket.gethostname()
        key_dir = key_dir or log_key_dir(path)
        _ensure_log_key(key_dir, identity or f"decision-log@{self.host}")
        self._key = load_private_key(key_dir / "signing_key")
        self.signer = fingerprint(self._key.public_key())
        # Always through a lock file: the server and training launchers share one log, and one of
        # them may rotate it.
        self._writer = ChainWriter(path, rotate_bytes=rotate_bytes, lock_file=True)
        self._pending: list[_Pending] = []
        self._condition = threading.Condition()
        self._closing = False
        self._unsigned = 0
        self._oldest_unsigned: float | None = None
        self._head: tuple[int, str] | None = None
        self.records_written = 0
        self.heads_signed = 0
        self._disk_state = "ok"  # "ok" | "low" | "critical" (see the module docstring)
        self.disk_free_fraction = 1.0
        self._disk_checked = 0.0
        self._check_disk()
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    @property
    def rotations(self) -> int:
        return self._writer.rotations

    @property
    def disk_state(self) -> str:
        """ "ok", "low" or "critical", looked at again at most once a second. Read, not only after a
        write: a shed request writes nothing, so a state refreshed by writes alone would shed for good
        once the disk had been nearly full, however much space was freed after."""
        self._check_disk()
        return self._disk_state

    # --- writers -------------------------------------------------------------------------------------

    def submit(self, payload: Mapping[str, Any]) -> Future[dict[str, Any]]:
        """Queue a record; the future resolves (to the chained record) once it is on disk."""
        future: Future[dict[str, Any]] = Future()
        with self._condition:
            if self._closing:
                future.set_exception(AifactoryError("the decision log is closed", code="log-closed"))
                return future
            self._pending.append(_Pending(payload, future))
            self._condition.notify()
        return future

    def record(self, payload: Mapping[str, Any], *, timeout: float | None = 30.0) -> dict[str, Any]:
        return self.submit(payload).result(timeout=timeout)

    def close(self) -> None:
        """Write what is queued, sign the final head, stop the writer."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        self._thread.join()
        self._writer.close()

    # --- the writer thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closing:
                    if self._oldest_unsigned is None:
                        self._condition.wait()
                        continue
                    remaining = self._oldest_unsigned + self.sign_interval - time.monotonic()
                    if remaining <= 0:
                        break
                    self._condition.wait(remaining)
                room = self.sign_every - self._unsigned
                batch, self._pending = self._pending[:room], self._pending[room:]
                closing = self._closing and not self._pending
            if batch:
                self._commit(batch)
                self._check_disk()
            if self._unsigned and (
                self._unsigned >= self.sign_every
                or closing
                or time.monotonic() - (self._oldest_unsigned or 0) >= self.sign_interval
            ):
                self._sign_head()
            if closing:
                return

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            records = self._writer.append_many([item.payload for item in batch])
        except (OSError, ValueError, AifactoryError) as exc:
            log.error("decision log write failed: %s", exc)
            for item in batch:
                item.future.set_exception(exc)
            return
        if self._oldest_unsigned is None:
            self._oldest_unsigned = time.monotonic()
        self._unsigned += len(records)
        self.records_written += len(records)
        self._head = (records[-1]["seq"], records[-1]["hash"])
        for item, record in zip(batch, records, strict=True):
            item.future.set_result(record)

    def _check_disk(self) -> None:
        """At most once a second (a statvfs): warn when space runs low, shed load before it runs out.
        Called by the writer after each batch and by readers of `disk_state` (request threads)."""
        now = time.monotonic()
        if now - self._disk_checked < DISK_CHECK_INTERVAL:
            return
        self._disk_checked = now
        try:
            usage = shutil.disk_usage(self.path.parent)
        except OSError as exc:
            log.error("cannot read the free space under %s: %s", self.path.parent, exc)
            return
        self.disk_free_fraction = usage.free / usage.total if usage.total else 0.0
        state = (
            "critical"
            if self.disk_free_fraction < self.disk_shed_free
            else "low"
            if self.disk_free_fraction < self.disk_warn_free
            else "ok"
        )
        if state != self._disk_state and state != "ok":
            log.warning(
                "decision log disk %s: %.1f%% free under %s (warn below %.0f%%, shed requests below %.0f%%)",
                state,
                100 * self.disk_free_fraction,
                self.path.parent,
                100 * self.disk_warn_free,
                100 * self.disk_shed_free,
            )
        self._disk_state = state

    def _sign_head(self) -> None:
        """Sign the log's head. Several processes may append to one log (the server and training
        launchers on a node): the head is read, signed and written out under the log's lock, so signed
        heads always name the true last record and appear in the heads file in seq order."""
        if self._head is None:
            return
        with self._writer.locked():
            current = read_head(self.path)
            head = {
                "schema": HEAD_SCHEMA,
                "canon": CANON,
                "log": self.path.name,
                "host": self.host,
                "seq": current.seq,
                "hash": current.hash,
                "records": current.count,
                "time": _now_iso(),
                "signer": self.signer,
                "bound": {"records": self.sign_every, "seconds": self.sign_interval},
                "retention_days": self.retention_days,
            }
            signature = sign(canonical_bytes(head), self._key, LOG_NAMESPACE)
            line = canonical_bytes({**head, "signature": signature}) + b"\n"
            for target in (self.heads_path, *self.head_copies):
                try:
                    _append_durably(target, line)
                except OSError as exc:  # a missing copy target must not stop the log; verify will notice
                    log.error("cannot write the signed head to %s: %s", target, exc)
        self._unsigned = 0
        self._oldest_unsigned = None
        self.heads_signed += 1


# --- verification -----------------------------------------------------------------------------------------


@dataclass
class LogReport:
    log: str
    heads: str
    trust: str
    records: int = 0
    first_seq: int = 0
    last_seq: int = -1
    segments: list[str] = field(default_factory=list)
    collected: list[str] = field(default_factory=list)
    signed_heads: int = 0
    last_signed_seq: int = -1
    unsigned_tail: int = 0
    retention_days: int = DEFAULT_RETENTION_DAYS
    problems: list[str] = field(default_factory=list)  # integrity (AU-9)
    retention_problems: list[str] = field(default_factory=list)  # records kept (AU-11)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.retention_problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "log": self.log,
            "heads": self.heads,
            "trust": self.trust,
            "ok": self.ok,
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "segments": list(self.segments),
            "collected": list(self.collected),
            "signed_heads": self.signed_heads,
            "last_signed_seq": self.last_signed_seq,
            "unsigned_tail": self.unsigned_tail,
            "retention_days": self.retention_days,
            "problems": list(self.problems),
            "retention_problems": list(self.retention_problems),
            "warnings": list(self.warnings),
        }

    def render(self) -> str:
        verdict = "verifies" if self.ok else "DOES NOT VERIFY"
        lines = [
            f"{self.log}: {verdict}: {self.records} records in {len(self.segments)} file(s), "
            f"{self.signed_heads} signed heads (last covers seq {self.last_signed_seq}; {self.unsigned_tail} "
            f"records after it are not yet covered by a signature); signer trust from {self.trust}"
        ]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  retention: {p}" for p in self.retention_problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _check_head_line(line: Line, allowed_signers: Path) -> tuple[dict[str, Any] | None, str]:
    """(the head, "") when the line is a head signed by a trusted key, in its canonical form; else
    (None, why)."""
    if line.record is None:
        return None, f"not a signed head ({line.error or 'empty line'})"
    value = line.record
    canon = value.get("canon")
    if canon not in CANONS:
        return None, f"unknown canonical form {canon!r}"
    head = {k: v for k, v in value.items() if k != "signature"}
    try:
        verify(
            canonical_bytes(head, canon),
            str(value.get("signature")),
            allowed_signers=allowed_signers,
            namespace=LOG_NAMESPACE,
        )
        if canon is not None and line.raw != canonical_bytes(value, canon):
            return None, "the line is not the signed head's canonical form (it was rewritten)"
    except SignatureError as exc:
        return None, f"signed head does not verify: {exc.message}"
    except ChainError as exc:
        return None, exc.message
    if not isinstance(head.get("seq"), int) or not isinstance(head.get("hash"), str):
        return None, "a signed head without seq and hash"
    return head, ""


def _read_heads(path: Path, allowed_signers: Path, report: LogReport) -> list[dict[str, Any]]:
    heads: list[dict[str, Any]] = []
    if not path.exists():
        return heads
    for line in iter_lines(path):
        head, why = _check_head_line(line, allowed_signers)
        if head is None:
            report.problems.append(f"{path} line {line.number}: {why}")
            continue
        if heads and int(head["seq"]) < int(heads[-1]["seq"]):
            report.problems.append(f"{path} line {line.number}: signed head seq {head['seq']} goes backwards")
        head["_source"] = str(path)
        heads.append(head)
    return heads


def verify_heads_file(path: Path, allowed_signers: Path) -> tuple[int, list[str]]:
    """(signed heads that verify, problems) for a heads file on its own: every line a head signed by
    a key `allowed_signers` grants, in canonical form, seq never going back. The audit checks each
    collected copy this way: a node re-keyed after its key was first collected shows here."""
    report = LogReport(log="", heads=str(path), trust=str(allowed_signers))
    heads = _read_heads(path, allowed_signers, report)
    return len(heads), report.problems


def _hashes_at(paths: Sequence[Path], seqs: set[int]) -> dict[int, str]:
    found: dict[int, str] = {}
    if not seqs:
        return found
    for path in paths:
        for line in iter_lines(path):
            if line.record is not None and line.record.get("seq") in seqs:
                found.setdefault(int(line.record["seq"]), str(line.record.get("hash")))
    return found


def _check_heads_against_log(heads: list[dict[str, Any]], paths: Sequence[Path], report: LogReport) -> None:
    """Every signed head, from beside the log or collected off the host, must name a record the log
    holds, with that record's hash: a head past the log's end is truncation."""
    wanted: dict[tuple[int, str], dict[str, Any]] = {}  # one per distinct head: a copy may disagree
    for head in heads:
        wanted.setdefault((int(head["seq"]), str(head["hash"])), head)
    kept = {key for key in wanted if key[0] >= report.first_seq}  # older: archived segments (AU-11)
    found = _hashes_at(paths, {seq for seq, _ in kept})
    for seq, digest in sorted(kept):
        source = wanted[(seq, digest)]["_source"]
        if seq not in found:
            report.problems.append(
                f"the signed head at seq {seq} (from {source}) has no record: the log was truncated or "
                f"records removed (it ends at seq {report.last_seq}); records seq "
                f"{report.last_seq + 1}..{seq} are gone"
            )
        elif found[seq] != digest:
            report.problems.append(
                f"the signed head at seq {seq} (from {source}) does not match the log's record seq {seq}: "
                f"the log was rewritten at or before seq {seq}"
            )


def _check_coverage(heads: list[dict[str, Any]], report: LogReport) -> None:
    """A non-empty log needs a signed head, and its records may run past the last one by at most the
    writer's signing bound (the documented unsigned tail)."""
    if not heads:
        report.unsigned_tail = report.records
        if report.records:
            report.problems.append(
                f"no signed head covers this log: records seq {report.first_seq}..{report.last_seq} are "
                f"not covered by any signature (heads file {report.heads} missing or empty, and no "
                "collected copy): cutting or rewriting them would go unnoticed"
            )
        return
    last = max(heads, key=lambda h: int(h["seq"]))
    report.last_signed_seq = int(last["seq"])
    report.unsigned_tail = max(0, report.last_seq - report.last_signed_seq)
    bound = last.get("bound")
    allowed = int(bound.get("records", 0)) if isinstance(bound, dict) else 0
    if report.unsigned_tail > allowed:
        report.problems.append(
            f"records seq {report.last_signed_seq + 1}..{report.last_seq} run {report.unsigned_tail} past "
            f"the last signed head (seq {report.last_signed_seq}), beyond the writer's bound of {allowed} "
            "unsigned records: the heads were cut or deleted, or something else appended"
        )


def _record_time(record: dict[str, Any] | None) -> datetime | None:
    value = (record or {}).get("time")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _check_retention(paths: Sequence[Path], report: LogReport, now: datetime) -> None:
    """A gap in the series -- segments missing before the first file, or between two -- is allowed only
    where every missing record is older than the retention. A missing record is no younger than the
    record kept just after it, so that record's time bounds theirs."""
    cutoff = now - timedelta(days=report.retention_days)
    expected = 0
    for path in paths:
        first, last = edge_records(path)
        if first is None:
            continue
        seq = first.get("seq")
        if isinstance(seq, int) and seq > expected:
            after = _record_time(first)
            if after is None or after > cutoff:
                report.retention_problems.append(
                    f"records seq {expected}..{seq - 1} are missing before {path.name} (a segment was "
                    f"removed), but the record after them (seq {seq}, "
                    f"{after.isoformat() if after else 'of unknown time'}) is within the retention of "
                    f"{report.retention_days} days"
                )
        last_seq = (last or {}).get("seq")
        expected = last_seq + 1 if isinstance(last_seq, int) else expected


def verify_log(
    log_path: Path | str,
    heads_path: Path | str | None = None,
    allowed_signers: Path | str | None = None,
    *,
    collected: Sequence[Path] = (),
    retention_days: int | None = None,
    now: datetime | None = None,
) -> LogReport:
    """Verify the log's series (segments and live file), its signed heads, the copies collected off
    the host, and that no segment younger than the retention is missing.

    Detects edited, deleted, inserted, reordered or re-encoded records (the chain, the canonical form),
    a chain rewritten from some point on (a signed head's hash no longer matches), truncation up to the
    last signed head (a head, here or collected, names a seq the log no longer has), heads deleted or
    stopped (a non-empty log with no head, or an unsigned tail beyond the writer's bound), and segments
    removed too young. `allowed_signers` should come from somewhere the host's owner cannot change (the
    control host's collected copy); without it the key file beside the log is used and the report says
    so. `retention_days`: the spec's, else the last head's, else six months.
    """
    log_path = Path(log_path)
    heads_file = Path(heads_path) if heads_path else heads_path_for(log_path)
    trust_file = Path(allowed_signers) if allowed_signers else log_key_dir(log_path) / "allowed_signers"
    report = LogReport(
        log=str(log_path),
        heads=str(heads_file),
        trust=str(trust_file) + ("" if allowed_signers else " (beside the log: weak)"),
        collected=[str(p) for p in collected],
    )
    paths = segments_of(log_path)
    chain = verify_chain(log_path)
    report.records, report.last_seq, report.first_seq = chain.records, chain.head.seq, chain.first_seq
    report.segments = list(chain.segments)
    report.problems.extend(chain.problems)
    if not trust_file.exists():
        report.problems.append(f"no trust file {trust_file}: signed heads cannot be checked")
        return report
    heads = _read_heads(heads_file, trust_file, report)
    for copy in collected:
        if not copy.exists():
            report.warnings.append(f"no collected copy of the heads at {copy}")
        heads += _read_heads(copy, trust_file, report)
    report.signed_heads = len(heads)
    _check_heads_against_log(heads, paths, report)
    _check_coverage(heads, report)
    latest = max(heads, key=lambda h: int(h["seq"]), default={})
    head_retention = latest.get("retention_days")
    report.retention_days = retention_days or (
        head_retention if isinstance(head_retention, int) and head_retention > 0 else DEFAULT_RETENTION_DAYS
    )
    _check_retention(paths, report, now or datetime.now(UTC))
    return report
