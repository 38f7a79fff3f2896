"""Hash-chained, append-only JSON-lines logs (NIST AU-9 integrity of audit information).

Shared by the operator log, the runtime's decision log and the audit report's verification.
Each line is one JSON object with ``seq`` (0, 1, 2, ...), ``prev`` (the previous record's hash,
64 zeros for the first) and ``hash``: the SHA-256 of the record's canonical JSON without ``hash``.
An edited, deleted, inserted or reordered record breaks the chain; cutting records off the end is
only detectable against a signed head kept elsewhere (see aifactory.runtime.decisionlog).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aifactory.errors import ChainError, Location

GENESIS = "0" * 64


def canonical_json(value: Any) -> str:
    """The one serialization every digest in aifactory is computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


@dataclass(frozen=True)
class ChainHead:
    seq: int  # seq of the last record, -1 for an empty log
    hash: str  # hash of the last record, GENESIS for an empty log

    @property
    def count(self) -> int:
        return self.seq + 1


@dataclass(frozen=True)
class ChainReport:
    path: str
    records: int
    head: ChainHead
    ok: bool
    problems: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "records": self.records,
            "head": {"seq": self.head.seq, "hash": self.head.hash},
            "ok": self.ok,
            "problems": list(self.problems),
        }


def _last_line(handle: BinaryIO) -> bytes:
    """The last non-empty line of a binary file, read from the end (logs can be large)."""
    handle.seek(0, os.SEEK_END)
    end = handle.tell()
    block = 4096
    data = b""
    pos = end
    while pos > 0:
        step = min(block, pos)
        pos -= step
        handle.seek(pos)
        data = handle.read(step) + data
        stripped = data.rstrip(b"\n")
        if b"\n" in stripped:
            return stripped.rsplit(b"\n", 1)[1]
    return data.rstrip(b"\n")


def read_head(path: Path) -> ChainHead:
    if not path.exists() or path.stat().st_size == 0:
        return ChainHead(-1, GENESIS)
    with path.open("rb") as handle:
        line = _last_line(handle)
    try:
        last = json.loads(line)
        return ChainHead(int(last["seq"]), str(last["hash"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ChainError(
            f"the last record of {path} is not a chain record: {exc}",
            location=Location(file=str(path)),
            hint="run `aifactory audit verify-log` to see where the chain breaks",
        ) from exc


class ChainWriter:
    """Appends records to one chained log; each append is durable (fsync) before it returns.

    The file is locked for the whole append so that writers in several processes interleave
    whole records and each sees the true head.
    """

    def __init__(self, path: Path, *, mode: int = 0o600, durable: bool = True) -> None:
        self.path = path
        self.durable = durable
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, mode)
        self._handle = os.fdopen(fd, "a+b", buffering=0)
        self._last_write: tuple[int, ChainHead] | None = None  # (file size after it, head it left)

    def append(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return self.append_many([payload])[0]

    def append_many(self, payloads: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Append several records under one lock with one write and one fsync (group commit)."""
        if any("seq" in p or "prev" in p or "hash" in p for p in payloads):
            raise ValueError("payload may not set seq, prev or hash")
        if not payloads:
            return []
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        try:
            size = os.fstat(self._handle.fileno()).st_size
            head = self._head(size)
            records: list[dict[str, Any]] = []
            for payload in payloads:
                record: dict[str, Any] = {"seq": head.seq + 1, "prev": head.hash, **payload}
                record["hash"] = record_hash(record)
                head = ChainHead(record["seq"], record["hash"])
                records.append(record)
            data = "".join(canonical_json(r) + "\n" for r in records).encode()
            written = self._handle.write(data)
            if written != len(data):
                raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
            if self.durable:
                os.fsync(self._handle.fileno())
            self._last_write = (size + written, head)
            return records
        finally:
            fcntl.flock(self._handle, fcntl.LOCK_UN)

    def _head(self, size: int) -> ChainHead:
        """The head to chain onto, under the lock. While the file is the size this writer's last append
        left, nobody appended since and that append's head is the head (a busy log skips re-reading its
        tail per group commit); otherwise another writer appended, so read it from the file."""
        if self._last_write is not None and self._last_write[0] == size:
            return self._last_write[1]
        return read_head(self.path)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ChainWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """Yield (line number, record or None when unparsable, raw line)."""
    with path.open("r", encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            raw = raw.rstrip("\n")
            if not raw:
                continue
            try:
                value = json.loads(raw)
            except ValueError:
                yield number, None, raw
                continue
            yield number, value if isinstance(value, dict) else None, raw


def verify_chain(path: Path, *, max_problems: int = 50) -> ChainReport:
    """Check every link; report each break with its line number (streams: bounded memory)."""
    problems: list[str] = []
    expected_seq = 0
    prev = GENESIS
    records = 0
    head = ChainHead(-1, GENESIS)
    if not path.exists():
        return ChainReport(str(path), 0, head, False, (f"{path}: log does not exist",))
    for number, record, _raw in iter_records(path):
        records += 1
        if record is None:
            problems.append(f"line {number}: not a JSON record")
            continue
        seq, rprev, rhash = record.get("seq"), record.get("prev"), record.get("hash")
        if rhash != record_hash(record):
            problems.append(f"line {number}: record seq={seq} was edited (its hash does not match)")
        if seq != expected_seq:
            problems.append(
                f"line {number}: expected seq {expected_seq}, found {seq} "
                "(a record was deleted, inserted or moved)"
            )
        if rprev != prev:
            problems.append(f"line {number}: seq={seq} does not link to the previous record")
        prev = str(rhash)
        expected_seq = (seq + 1) if isinstance(seq, int) else expected_seq + 1
        head = ChainHead(seq if isinstance(seq, int) else -1, prev)
        if len(problems) >= max_problems:
            problems.append("... more problems not shown")
            break
    return ChainReport(str(path), records, head, not problems, tuple(problems))
