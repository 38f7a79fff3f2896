"""The runtime's decision log: every authorization decision, hash-chained, durable, with signed heads.

AU-2/AU-3/AU-12 (every decision, allow or deny, is recorded with who, what, which resource, the
reason codes and the decision id), AU-9 (integrity: the hash chain of `aifactory.chain`, plus
signed heads) and AU-10 (non-repudiation: heads are signed with the node's Ed25519 key in namespace
`aifactory-log`, verifiable with `ssh-keygen -Y verify`).

Durability: `DecisionLog.record()` returns only after the record is written and fsync'd. Concurrent
callers are group-committed by one writer thread: one write and one fsync for all records waiting.

Signed heads: after a commit, the writer signs the log head (seq, hash) when `sign_every` records
(default 100) are unsigned, or when the oldest unsigned record is `sign_interval` seconds old
(default 5 s), and at shutdown. Each signed head is appended (fsync'd) to the heads file
(`<log stem>.heads.jsonl` beside the log) and to every `head_copies` file, which should be on
storage that is not this host (a mount from the control host) so that whoever controls this host
cannot rewrite both. The bound: *only records written after the last signed head can be cut off the
end unnoticed* -- at most `sign_every` records, or `sign_interval` seconds of records (plus the time
one signature takes). Every other edit, deletion, insertion, reordering or truncation is detected by
`verify_log`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifactory.chain import ChainWriter, canonical_json, iter_records, read_head, verify_chain
from aifactory.errors import AifactoryError
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
log = logging.getLogger(__name__)


def heads_path_for(log_path: Path) -> Path:
    return log_path.with_name(f"{log_path.stem}.heads.jsonl")


def log_key_dir(log_path: Path) -> Path:
    return log_path.parent / "log-key"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _append_durably(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
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
    ) -> None:
        if sign_every < 1 or sign_interval <= 0:
            raise AifactoryError("sign_every must be >= 1 and sign_interval > 0", code="usage")
        self.path = path
        self.heads_path = heads_path or heads_path_for(path)
        self.head_copies = tuple(head_copies)
        self.sign_every = sign_every
        self.sign_interval = sign_interval
        key_dir = key_dir or log_key_dir(path)
        _ensure_log_key(key_dir, identity or f"decision-log@{socket.gethostname()}")
        self._key = load_private_key(key_dir / "signing_key")
        self.signer = fingerprint(self._key.public_key())
        self._writer = ChainWriter(path)
        self._pending: list[_Pending] = []
        self._condition = threading.Condition()
        self._closing = False
        self._unsigned = 0
        self._oldest_unsigned: float | None = None
        self._head: tuple[int, str] | None = None
        self.records_written = 0
        self.heads_signed = 0
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

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

    def _sign_head(self) -> None:
        """Sign the log file's head. Several processes may append to one log (the server and training
        launchers on a node): the head is read, signed and written out under the log's lock, so signed
        heads always name the true last record and appear in the heads file in seq order."""
        if self._head is None:
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = read_head(self.path)
            head = {
                "schema": HEAD_SCHEMA,
                "log": self.path.name,
                "seq": current.seq,
                "hash": current.hash,
                "records": current.count,
                "time": _now_iso(),
                "signer": self.signer,
                "bound": {"records": self.sign_every, "seconds": self.sign_interval},
            }
            signature = sign(canonical_json(head).encode(), self._key, LOG_NAMESPACE)
            line = json.dumps({**head, "signature": signature}, sort_keys=True) + "\n"
            for target in (self.heads_path, *self.head_copies):
                try:
                    _append_durably(target, line)
                except OSError as exc:  # a missing copy target must not stop the log; verify will notice
                    log.error("cannot write the signed head to %s: %s", target, exc)
        finally:
            os.close(fd)  # releases the lock
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
    last_seq: int = -1
    signed_heads: int = 0
    last_signed_seq: int = -1
    unsigned_tail: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "log": self.log,
            "heads": self.heads,
            "trust": self.trust,
            "ok": self.ok,
            "records": self.records,
            "last_seq": self.last_seq,
            "signed_heads": self.signed_heads,
            "last_signed_seq": self.last_signed_seq,
            "unsigned_tail": self.unsigned_tail,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }

    def render(self) -> str:
        verdict = "verifies" if self.ok else "DOES NOT VERIFY"
        lines = [
            f"{self.log}: {verdict}: {self.records} records, {self.signed_heads} signed heads "
            f"(last covers seq {self.last_signed_seq}; {self.unsigned_tail} records after it are not yet "
            f"covered by a signature); signer trust from {self.trust}"
        ]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _read_heads(path: Path, allowed_signers: Path, report: LogReport) -> list[dict[str, Any]]:
    heads: list[dict[str, Any]] = []
    if not path.exists():
        return heads
    for number, value, _raw in iter_records(path):
        if value is None:
            report.problems.append(f"{path.name} line {number}: not a signed head")
            continue
        signature = value.get("signature")
        head = {k: v for k, v in value.items() if k != "signature"}
        try:
            verify(
                canonical_json(head).encode(),
                str(signature),
                allowed_signers=allowed_signers,
                namespace=LOG_NAMESPACE,
            )
        except SignatureError as exc:
            report.problems.append(f"{path.name} line {number}: signed head does not verify: {exc.message}")
            continue
        if heads and int(head["seq"]) < int(heads[-1]["seq"]):
            report.problems.append(f"{path.name} line {number}: signed head seq {head['seq']} goes backwards")
        heads.append(head)
    return heads


def verify_log(
    log_path: Path | str, heads_path: Path | str | None = None, allowed_signers: Path | str | None = None
) -> LogReport:
    """Verify the chain and every signed head against the log.

    Detects edited, deleted, inserted and reordered records (the chain), a chain rewritten from some
    point on (a signed head's hash no longer matches), and truncation up to the last signed head (a
    signed head names a seq the log no longer has). `allowed_signers` should come from somewhere the
    host's owner cannot change; without it the key file beside the log is used and the report says so.
    """
    log_path = Path(log_path)
    heads_file = Path(heads_path) if heads_path else heads_path_for(log_path)
    trust_file = Path(allowed_signers) if allowed_signers else log_key_dir(log_path) / "allowed_signers"
    report = LogReport(
        log=str(log_path),
        heads=str(heads_file),
        trust=str(trust_file) + ("" if allowed_signers else " (beside the log: weak)"),
    )
    chain = verify_chain(log_path)
    report.records, report.last_seq = chain.records, chain.head.seq
    report.problems.extend(chain.problems)
    if not trust_file.exists():
        report.problems.append(f"no trust file {trust_file}: signed heads cannot be checked")
        return report
    heads = _read_heads(heads_file, trust_file, report)
    report.signed_heads = len(heads)
    wanted = {int(h["seq"]): str(h["hash"]) for h in heads}
    found: dict[int, str] = {}
    if wanted and log_path.exists():
        for _number, record, _raw in iter_records(log_path):
            if record is not None and record.get("seq") in wanted:
                found.setdefault(int(record["seq"]), str(record.get("hash")))
    for seq, digest in sorted(wanted.items()):
        if seq not in found:
            report.problems.append(
                f"signed head at seq {seq} has no record: the log was truncated or records "
                f"were removed (it ends at seq {report.last_seq})"
            )
        elif found[seq] != digest:
            report.problems.append(
                f"signed head at seq {seq} does not match the log's record: the log was "
                f"rewritten at or before seq {seq}"
            )
    if heads:
        report.last_signed_seq = int(heads[-1]["seq"])
        bound = heads[-1].get("bound", {})
        report.unsigned_tail = max(0, report.last_seq - report.last_signed_seq)
        if isinstance(bound, dict) and report.unsigned_tail > int(bound.get("records", report.unsigned_tail)):
            report.warnings.append(
                f"{report.unsigned_tail} records after the last signed head exceed the signing "
                f"bound of {bound.get('records')} records (writer stopped, or appended by "
                f"something else)"
            )
    else:
        report.unsigned_tail = report.records
        if report.records:
            report.warnings.append(
                "no signed head covers this log: cutting records off its end would go unnoticed"
            )
    return report
