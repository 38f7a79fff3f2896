"""Hash-chained, append-only JSON-lines logs (NIST AU-9 integrity of audit information).

Shared by the operator log, the runtime's decision log and the audit report's verification.
Each line is one JSON object with ``seq`` (0, 1, 2, ...), ``prev`` (the previous record's hash,
64 zeros for the first), ``canon`` (which canonical JSON the record is written in) and ``hash``: the
SHA-256 of the record's canonical JSON without ``hash``. Each line is exactly the canonical JSON of its
record (with ``hash``), so one record has one byte form: a line with duplicate keys, other spacing or
another key order does not verify, even when it parses to the same values.

Canonical forms (``canon``):

- ``"rfc8785"``: the JSON Canonicalization Scheme of RFC 8785 (the `rfc8785` package): keys sorted by
  their UTF-16 code units, no whitespace, ECMAScript number forms, minimal string escapes, UTF-8.
  Everything written now.
- absent: the form aifactory wrote before (Python's ``json.dumps(sort_keys=True, separators=(",", ":"),
  ensure_ascii=False)``); kept so that older logs still verify (tests/fixtures/logformat-v0).

A log may be rotated into segments (``decisions.jsonl.000000001000``: the rotated file whose first record
has seq 1000; the live file keeps the log's name): the chain runs on across files, and a series verifies
as one chain. An edited, deleted, inserted or reordered record breaks the chain; cutting records off
the end is only detectable against a signed head kept elsewhere (see aifactory.trust.decisionlog).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import rfc8785

from aifactory.errors import ChainError, Location, LogLineError

GENESIS = "0" * 64
CANON = "rfc8785"  # the `canon` of every record and signed head written now
CANONS = (None, CANON)  # None: written before records named their canonical form
SEGMENT_DIGITS = 12
_SEGMENT_SUFFIX = re.compile(rf"^\.(\d{{{SEGMENT_DIGITS}}})$")


def canonical_json(value: Any) -> str:
    """The legacy canonical form: digests that are neither signed nor chained (plan and report ids)
    keep it so that their values do not change; logs written before `canon` existed used it too."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_SAFE_INT = 2**53 - 1


def _plain(value: Any) -> bool:
    """Whether Python's sorted, compact json.dumps already writes `value` as RFC 8785 does: no floats
    (number forms differ), integers within 53 bits, and no key holding a character above U+D7FF (only
    there does sorting by code point differ from sorting by UTF-16 code units). Strings escape alike
    (quote, backslash, \\b \\f \\n \\r \\t, other controls as lowercase \\u00xx). Decision records are
    plain: this keeps the serving hot path at the C encoder's speed. tests/foundation/test_canonical_json.py
    checks it against the rfc8785 package."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_SAFE_INT <= value <= _SAFE_INT)
    if kind is dict:
        return all((k.isascii() or max(k, default="") < "\ud800") and _plain(v) for k, v in value.items())
    if kind is list:
        return all(_plain(v) for v in value)
    return False


def _jcs(value: Any, plain: bool) -> bytes:
    if plain:
        try:
            return canonical_json(value).encode()
        except UnicodeEncodeError:  # a lone surrogate: rfc8785 says what is wrong
            pass
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise ChainError(
            f"cannot write this value as RFC 8785 canonical JSON: {exc}",
            hint="integers must fit in 53 bits, floats must be finite, strings valid Unicode",
        ) from exc


def canonical_bytes(value: Any, canon: str | None = CANON) -> bytes:
    """The canonical form named by `canon` (see the module docstring)."""
    if canon == CANON:
        return _jcs(value, _plain(value))
    if canon is None:
        return canonical_json(value).encode()
    raise ChainError(f"unknown canonical form {canon!r}", hint=f"this aifactory knows {CANONS}")


def record_hash(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    canon = record.get("canon")
    return hashlib.sha256(canonical_bytes(body, canon if isinstance(canon, str) else None)).hexdigest()


# --- reading lines strictly ---------------------------------------------------------------------------


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise LogLineError(f"duplicate key {key!r}")
        value[key] = item
    return value


def _no_constants(name: str) -> Any:
    raise LogLineError(f"{name} is not JSON")


def parse_line(raw: bytes) -> dict[str, Any]:
    """One log line -> its object; refuses bytes that are not UTF-8, duplicate keys, NaN/Infinity."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1]
        raise LogLineError(f"not UTF-8 (byte 0x{bad.hex()} at column {exc.start + 1})") from None
    try:
        value = json.loads(text, object_pairs_hook=_object_without_duplicates, parse_constant=_no_constants)
    except LogLineError:
        raise
    except ValueError as exc:
        raise LogLineError(f"not JSON ({exc})") from None
    except RecursionError:
        raise LogLineError("not JSON (nested too deeply)") from None
    if not isinstance(value, dict):
        raise LogLineError("not a JSON object")
    return value


@dataclass(frozen=True)
class Line:
    path: Path
    number: int
    raw: bytes
    record: dict[str, Any] | None  # None when the line is not a JSON object
    error: str  # why it is not, else ""

    @property
    def where(self) -> str:
        return f"{self.path.name} line {self.number}"


def iter_lines(path: Path) -> Iterator[Line]:
    """Every line of a JSON-lines file, parsed strictly (bounded memory: logs can be large)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            raw = raw[:-1] if raw.endswith(b"\n") else raw
            try:
                yield Line(path, number, raw, parse_line(raw), "")
            except LogLineError as exc:
                yield Line(path, number, raw, None, str(exc))


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """Yield (line number, record or None when unparsable, raw line); blank lines are skipped."""
    for line in iter_lines(path):
        if line.raw:
            yield line.number, line.record, line.raw.decode("utf-8", errors="replace")


# --- heads and segments ---------------------------------------------------------------------------------


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
    first_seq: int = 0  # the first record present (above 0 when older segments were removed)
    segments: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "records": self.records,
            "first_seq": self.first_seq,
            "head": {"seq": self.head.seq, "hash": self.head.hash},
            "segments": list(self.segments),
            "ok": self.ok,
            "problems": list(self.problems),
        }


def segment_path(path: Path, first_seq: int) -> Path:
    return path.with_name(f"{path.name}.{first_seq:0{SEGMENT_DIGITS}d}")


def segments_of(path: Path) -> list[Path]:
    """A log's series, oldest first: its rotated segments, then the live file (when it exists)."""
    rotated = sorted(
        p
        for p in path.parent.glob(f"{glob_escape(path.name)}.*")
        if _SEGMENT_SUFFIX.match(p.name[len(path.name) :])
    )
    return [*rotated, path] if path.exists() else rotated


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


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
            return bytes(stripped.rsplit(b"\n", 1)[1])
    return bytes(data.rstrip(b"\n"))


def _first_line(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.readline().rstrip(b"\n")


def edge_records(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A file's first and last records (None where that line is not one), without reading between."""
    with path.open("rb") as handle:
        lines = (handle.readline().rstrip(b"\n"), _last_line(handle))
    parsed: list[dict[str, Any] | None] = []
    for raw in lines:
        try:
            parsed.append(parse_line(raw) if raw else None)
        except LogLineError:
            parsed.append(None)
    return parsed[0], parsed[1]


def _head_of_line(path: Path, line: bytes) -> ChainHead:
    try:
        last = parse_line(line)
        return ChainHead(int(last["seq"]), str(last["hash"]))
    except (LogLineError, KeyError, TypeError, ValueError) as exc:
        raise ChainError(
            f"the last record of {path} is not a chain record: {exc}",
            location=Location(file=str(path)),
            hint="run `aifactory audit verify-log` to see where the chain breaks",
        ) from None


def read_head(path: Path) -> ChainHead:
    """The head of a log: its live file's last record, else (just rotated) the newest segment's."""
    for candidate in reversed(segments_of(path) if not path.exists() or path.stat().st_size == 0 else [path]):
        if candidate.stat().st_size == 0:
            continue
        with candidate.open("rb") as handle:
            return _head_of_line(candidate, _last_line(handle))
    return ChainHead(-1, GENESIS)


# --- writing ---------------------------------------------------------------------------------------------


class ChainWriter:
    """Appends records to one chained log; each append is durable (fsync) before it returns.

    The log is locked for the whole append so that writers in several processes interleave whole
    records and each sees the true head. With `rotate_bytes`, the live file is renamed to a segment
    once it reaches that size and a new one begun; such a log is locked through `<log>.lock` (the data
    file changes under the writers) and every writer of it must be made with the same `lock_file`.
    """

    def __init__(
        self,
        path: Path,
        *,
        mode: int = 0o600,
        durable: bool = True,
        rotate_bytes: int | None = None,
        lock_file: bool = False,
    ) -> None:
        if rotate_bytes is not None and (rotate_bytes < 1 or not lock_file):
            raise ValueError("rotation needs rotate_bytes >= 1 and a lock file")
        self.path = path
        self.durable = durable
        self.mode = mode
        self.rotate_bytes = rotate_bytes
        self.rotations = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = (
            os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, mode) if lock_file else None
        )
        self._handle = self._open()
        self._last_write: tuple[int, int, ChainHead] | None = None  # (inode, size after it, head it left)

    def _open(self) -> Any:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, self.mode)
        return os.fdopen(fd, "a+b", buffering=0)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the log's lock (and, for a rotating log, follow a rotation another writer made)."""
        fd = self._lock_fd if self._lock_fd is not None else self._handle.fileno()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if self._lock_fd is not None and not self._is_live():
                self._handle.close()
                self._handle = self._open()
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _is_live(self) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(self._handle.fileno()).st_ino
        except FileNotFoundError:
            return False

    def append(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return self.append_many([payload])[0]

    def append_many(self, payloads: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Append several records under one lock with one write and one fsync (group commit)."""
        if any("seq" in p or "prev" in p or "hash" in p or "canon" in p for p in payloads):
            raise ValueError("payload may not set seq, prev, canon or hash")
        if not payloads:
            return []
        with self.locked():
            stat = os.fstat(self._handle.fileno())
            head = self._head(stat.st_ino, stat.st_size)
            records: list[dict[str, Any]] = []
            lines: list[bytes] = []
            for payload in payloads:
                record: dict[str, Any] = {"seq": head.seq + 1, "prev": head.hash, "canon": CANON, **payload}
                plain = _plain(record)  # once: adding the hash (a string) keeps it plain
                record["hash"] = hashlib.sha256(_jcs(record, plain)).hexdigest()
                lines.append(_jcs(record, plain))
                head = ChainHead(record["seq"], record["hash"])
                records.append(record)
            data = b"\n".join(lines) + b"\n"
            written = self._handle.write(data)
            if written != len(data):
                raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
            if self.durable:
                os.fsync(self._handle.fileno())
            self._last_write = (stat.st_ino, stat.st_size + written, head)
            if self.rotate_bytes is not None and stat.st_size + written >= self.rotate_bytes:
                self._rotate()
            return records

    def _rotate(self) -> None:
        """Under the lock: the live file becomes the segment named by its first seq; a new one begins.
        The chain runs on: the next record links to the segment's last."""
        first = _head_of_line(self.path, _first_line(self.path)).seq
        target = segment_path(self.path, first)
        if target.exists():
            raise ChainError(
                f"cannot rotate {self.path}: {target} exists", location=Location(file=str(target))
            )
        os.rename(self.path, target)
        self._handle.close()
        self._handle = self._open()
        if self.durable:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename and the new file survive a crash
            finally:
                os.close(dir_fd)
        stat = os.fstat(self._handle.fileno())
        if self._last_write is not None:
            self._last_write = (stat.st_ino, 0, self._last_write[2])
        self.rotations += 1

    def _head(self, inode: int, size: int) -> ChainHead:
        """The head to chain onto, under the lock. While the file is the one and the size this writer's
        last append left, nobody appended since and that append's head is the head (a busy log skips
        re-reading its tail per group commit); otherwise another writer appended, so read it."""
        if self._last_write is not None and self._last_write[:2] == (inode, size):
            return self._last_write[2]
        return read_head(self.path)

    def close(self) -> None:
        self._handle.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    def __enter__(self) -> ChainWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- verifying -------------------------------------------------------------------------------------------


@dataclass
class _ChainState:
    problems: list[str]
    max_problems: int
    expected_seq: int | None = None  # None until the first record: a series may start past seq 0
    prev: str = GENESIS
    records: int = 0
    first_seq: int = 0
    head: ChainHead = ChainHead(-1, GENESIS)

    def add(self, problem: str) -> bool:
        self.problems.append(problem)
        return len(self.problems) >= self.max_problems


def _check_line(line: Line, state: _ChainState) -> None:
    if line.record is None:
        state.add(f"{line.where}: {line.error or 'empty line'}: not a chain record")
        return
    record = line.record
    seq, rprev, rhash, canon = record.get("seq"), record.get("prev"), record.get("hash"), record.get("canon")
    name = f"{line.where} (seq {seq})"
    if canon not in CANONS:
        state.add(f"{name}: unknown canonical form {canon!r}")
    else:
        try:
            if rhash != record_hash(record):
                state.add(f"{name}: the record was edited (its hash does not match)")
            elif line.raw != canonical_bytes(record, canon):
                state.add(f"{name}: the line is not its record's canonical form (it was rewritten)")
        except ChainError as exc:
            state.add(f"{name}: {exc.message}")
    if state.expected_seq is None:
        state.first_seq = seq if isinstance(seq, int) and seq >= 0 else 0
        state.expected_seq = state.first_seq
        if state.first_seq > 0:
            state.prev = str(rprev)  # older segments are not here: retention decides if that is right
    if seq != state.expected_seq:
        state.add(
            f"{name}: expected seq {state.expected_seq}, found {seq} "
            "(a record was deleted, inserted or moved)"
        )
    if rprev != state.prev:
        state.add(f"{name}: does not link to the previous record")
    state.prev = str(rhash)
    state.expected_seq = (seq + 1) if isinstance(seq, int) else state.expected_seq + 1
    state.head = ChainHead(seq if isinstance(seq, int) else -1, state.prev)


def verify_series(paths: Sequence[Path], *, max_problems: int = 50, name: str | None = None) -> ChainReport:
    """Check every link through the files of one series, in order; report each break with the file,
    line and seq (streams: bounded memory)."""
    state = _ChainState([], max_problems)
    label = name or (str(paths[-1]) if paths else "")
    if not paths:
        return ChainReport(label, 0, state.head, False, (f"{label}: log does not exist",))
    for path in paths:
        for line in iter_lines(path):
            state.records += 1
            _check_line(line, state)
            if len(state.problems) >= max_problems:
                state.problems.append("... more problems not shown")
                break
        else:
            continue
        break
    return ChainReport(
        label,
        state.records,
        state.head,
        not state.problems,
        tuple(state.problems),
        state.first_seq,
        tuple(p.name for p in paths),
    )


def verify_chain(path: Path, *, max_problems: int = 50) -> ChainReport:
    """Verify a log and the segments rotated out of it, as one chain."""
    return verify_series(segments_of(path), max_problems=max_problems, name=str(path))
