"""Dataset versions: immutable, content-addressed, signed by the site, residency-checked; and erasure.

On the site storage, below the dataset's planned folder (docs/data.md):

    <dataset dir>/...                          the dataset's own files (what training reads)
    <dataset dir>/feedback/pending/<id>.json   feedback waiting for the next version (aifactory.data.feedback)
    <dataset dir>/versions/objects/<sha256>    every file of every version, stored once under its digest
    <dataset dir>/versions/v000001.json        a version's manifest: its files and their SHA-256s, the
                                               dataset's owner, classification and residency (from the
                                               plan), the previous version's digest; signed, written once
    <dataset dir>/versions/v000001.erased-000003.json   the mark an erasure leaves on an older version
    <dataset dir>/versions/lineage.jsonl       signed, chained records: each version made, each erasure

A version's digest is `sha256:` of its manifest's RFC 8785 canonical JSON without `signature`. The
manifest and every lineage record are signed with the site's model-signing key (ECDSA, the scheme of
the model registry's promotion records: `openssl dgst -sha256 -verify model-signing.pub` checks one).
Nothing is ever rewritten: a manifest is created exclusively, objects are read-only, the lineage only
grows. A version's feedback is one file, `feedback/records.jsonl` (every record so far, one canonical
JSON line each, sorted by decision id): the previous version's records and the pending ones.

Before a version is written, the runtime policy decides `version` on `dataset/<name>` for the dataset's
owner once per country a copy of it lands in (its storage and every replica); any deny, an engine
error included, refuses the version and nothing is written (fail closed).

Erasure of one subject makes a new version without the subject's records, appends an erasure record to
the lineage (what: how many records, which files of which versions; when; on whose authority; the
subject only as a SHA-256, never any content), then destroys the older files that held the subject
(overwritten, then removed) and marks each affected manifest. Manifests are not changed, so every
signature still verifies; a destroyed file verifies as destroyed because a signed erasure names it.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import getpass
import hashlib
import json
import os
import re
import shutil
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from aifactory.chain import GENESIS, canonical_bytes
from aifactory.data.feedback import FEEDBACK_DIR, pending_records, valid_subject
from aifactory.durable import fsync_path
from aifactory.errors import DatasetVersionError, ModelRefused, PolicyDenied, UsageError
from aifactory.trust.models import ModelTrust, key_id, line_hash, promotion_body, signature_hash

if TYPE_CHECKING:
    from aifactory.plan.model import DatasetPlan, SitePlan
    from aifactory.trust.authz import Authorizer
    from aifactory.trust.issuing.models import ModelKey

VERSIONS_DIR = "versions"
OBJECTS_DIR = "objects"
LINEAGE = "lineage.jsonl"
VERSION_FORMAT = "aifactory.dataset-version/v1"
LINEAGE_FORMAT = "aifactory.dataset-lineage/v1"
MARK_FORMAT = "aifactory.dataset-erasure-mark/v1"
FEEDBACK_FILE = f"{FEEDBACK_DIR}/records.jsonl"  # a version's feedback, by its path inside the version
NOT_DATA = frozenset({VERSIONS_DIR, FEEDBACK_DIR})  # below the dataset folder, never a file of a version
_HEX = re.compile(r"[0-9a-f]{64}")
_VERSION_REF = re.compile(r"v?0*([1-9][0-9]{0,8})")
MAX_AUTHORITY = 500


@dataclass(frozen=True)
class DatasetStore:
    """Where one dataset's versions live, below its folder on the site storage."""

    dataset_dir: Path

    @property
    def root(self) -> Path:
        return self.dataset_dir / VERSIONS_DIR

    @property
    def objects(self) -> Path:
        return self.root / OBJECTS_DIR

    @property
    def lineage(self) -> Path:
        return self.root / LINEAGE

    def manifest(self, number: int) -> Path:
        return self.root / f"v{number:06d}.json"

    def mark(self, number: int, erasure: int) -> Path:
        return self.root / f"v{number:06d}.erased-{erasure:06d}.json"

    def object(self, sha256: str) -> Path:
        if not _HEX.fullmatch(sha256):
            raise DatasetVersionError(f"{sha256[:80]!r} is not a SHA-256")
        return self.objects / sha256


# --- reading and verifying ------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    number: int
    digest: str
    manifest: dict[str, Any]
    files: tuple[dict[str, Any], ...]  # each manifest entry with its "state": present, destroyed, ...

    def describe(self) -> dict[str, Any]:
        body = {k: v for k, v in self.manifest.items() if k not in ("files", "signature")}
        return {**body, "digest": self.digest, "files": [dict(f) for f in self.files]}


@dataclass(frozen=True)
class History:
    dataset: str
    versions: tuple[Version, ...]
    erasures: tuple[dict[str, Any], ...]  # the signed erasure records, as written
    problems: tuple[str, ...]
    head: str  # the hash the next lineage record chains to
    records: int  # lineage records that verified

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def latest(self) -> Version | None:
        return self.versions[-1] if self.versions else None

    def find(self, ref: str) -> Version:
        """A version by number (`3`, `v3`, `v000003`) or digest (`sha256:<hex>`)."""
        number = _VERSION_REF.fullmatch(ref)
        for version in self.versions:
            if (number and version.number == int(number.group(1))) or version.digest == ref:
                return version
        known = ", ".join(f"v{v.number}" for v in self.versions) or "none yet"
        raise DatasetVersionError(
            f"dataset {self.dataset} has no version {ref[:80]!r} (versions: {known})",
            code="dataset-version-not-found",
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "verified": self.ok,
            "problems": list(self.problems),
            "versions": [v.describe() for v in self.versions],
            "erasures": [_erasure_summary(e) for e in self.erasures],
        }


def _erasure_summary(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("signature", "after", "format")}


def record_signed(record: dict[str, Any], public: ec.EllipticCurvePublicKey) -> bool:
    """Whether the site's key signed `record` (its `signature` over the rest, RFC 8785 canonical)."""
    try:
        signature = base64.b64decode(str(record.get("signature")), validate=True)
        public.verify(signature, promotion_body(record), ec.ECDSA(signature_hash(public)))
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def manifest_digest(manifest: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(promotion_body(manifest)).hexdigest()


def read_history(dataset_dir: Path, trust: ModelTrust, *, dataset: str) -> History:
    """Every version and erasure of the lineage, each checked: the chain, every signature, each
    manifest's digest and link to the one before, every file's SHA-256 (or its signed destruction)."""
    store = DatasetStore(dataset_dir)
    try:
        public = trust.load()
    except ModelRefused as refused:
        return History(dataset, (), (), (f"no site key to verify with: {refused.message}",), GENESIS, 0)
    try:
        lines = store.lineage.read_bytes().splitlines()
    except FileNotFoundError:
        lines = []
    problems: list[str] = []
    head = GENESIS
    manifests: list[dict[str, Any]] = []
    erasures: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        problem, record = _lineage_problem(line, head=head, seq=number, dataset=dataset, public=public)
        if problem:
            problems.append(f"{LINEAGE}:{number}: {problem}")
            break  # the records after a bad one are not trusted
        assert record is not None
        (manifests if record["kind"] == "version" else erasures).append(record)
        head = line_hash(line)
    verified = len(manifests) + len(erasures)
    destroyed = {d["sha256"] for e in erasures for d in e.get("destroyed", [])}
    versions: list[Version] = []
    hashed: dict[str, str | None] = {}
    previous: str | None = None
    for entry in manifests:
        version, found = _checked_version(store, entry, public, previous, destroyed, hashed)
        problems += found
        if version is None:
            break
        versions.append(version)
        previous = version.digest
    problems += _mark_problems(store, erasures)
    listed = {store.manifest(v["version"]).name for v in manifests}
    for path in sorted(store.root.glob("v*.json")) if store.root.is_dir() else []:
        if ".erased-" not in path.name and path.name not in listed:
            problems.append(f"{path.name}: a manifest the lineage does not list")
    return History(dataset, tuple(versions), tuple(erasures), tuple(problems), head, verified)


def _lineage_problem(
    line: bytes, *, head: str, seq: int, dataset: str, public: ec.EllipticCurvePublicKey
) -> tuple[str | None, dict[str, Any] | None]:
    try:
        record = json.loads(line)
    except ValueError:
        return "not JSON", None
    if not isinstance(record, dict) or record.get("format") != LINEAGE_FORMAT:
        return f"not an {LINEAGE_FORMAT} record", None
    if record.get("after") != head:
        return "it does not chain to the record before it", None
    if record.get("seq") != seq:
        return f"its seq is {record.get('seq')!r}, not {seq}", None
    if record.get("dataset") != dataset:
        return f"it is for dataset {record.get('dataset')!r}", None
    if record.get("kind") not in ("version", "erasure"):
        return f"kind {record.get('kind')!r} is not version or erasure", None
    if record["kind"] == "version" and not (
        isinstance(record.get("version"), int) and isinstance(record.get("digest"), str)
    ):
        return "a version record without its number and digest", None
    if not record_signed(record, public):
        return "its signature does not verify against the site's key", None
    return None, record


def _checked_version(
    store: DatasetStore,
    entry: dict[str, Any],
    public: ec.EllipticCurvePublicKey,
    previous: str | None,
    destroyed: set[str],
    hashed: dict[str, str | None],
) -> tuple[Version | None, list[str]]:
    number, digest = int(entry["version"]), str(entry["digest"])
    name = store.manifest(number).name
    try:
        manifest = json.loads(store.manifest(number).read_bytes())
    except (OSError, ValueError) as exc:
        return None, [f"{name}: cannot be read ({exc})"]
    if not isinstance(manifest, dict) or manifest.get("format") != VERSION_FORMAT:
        return None, [f"{name}: not an {VERSION_FORMAT} manifest"]
    problems = []
    if manifest_digest(manifest) != digest:
        problems.append(f"{name}: its digest is not the one the lineage names (changed)")
    if not record_signed(manifest, public):
        problems.append(f"{name}: its signature does not verify against the site's key")
    if manifest.get("version") != number or manifest.get("previous") != previous:
        problems.append(f"{name}: it does not follow the version before it")
    files = []
    for item in manifest.get("files", []):
        sha = str(item.get("sha256"))
        state = "destroyed" if sha in destroyed else _object_state(store, sha, hashed)
        if sha in destroyed and _object_state(store, sha, hashed) != "missing":
            state = "present"
            problems.append(f"{name}: {item.get('path')} should have been destroyed by an erasure")
        elif state in ("missing", "altered"):
            problems.append(f"{name}: {item.get('path')} is {state}")
        files.append({**item, "state": state})
    return Version(number, digest, manifest, tuple(files)), problems


def _object_state(store: DatasetStore, sha: str, hashed: dict[str, str | None]) -> str:
    if sha not in hashed:
        try:
            hashed[sha] = _sha256_file(store.object(sha))
        except FileNotFoundError:
            hashed[sha] = None
        except DatasetVersionError:
            hashed[sha] = "not a digest"
    found = hashed[sha]
    return "missing" if found is None else "present" if found == sha else "altered"


def _mark_problems(store: DatasetStore, erasures: list[dict[str, Any]]) -> list[str]:
    problems = []
    for erasure in erasures:
        for number in sorted({n for d in erasure.get("destroyed", []) for n in d.get("versions", [])}):
            if not store.mark(int(number), int(erasure["seq"])).is_file():
                problems.append(f"v{int(number):06d}: the mark of erasure {erasure['seq']} is missing")
    return problems


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- making versions ------------------------------------------------------------------------------


def check_residency(plan: SitePlan, dataset: DatasetPlan, authorizer: Authorizer) -> list[str]:
    """Ask the runtime policy, for the dataset's owner, to put a version in each country its storage
    keeps a copy in; the decision ids when every one allows, else PolicyDenied (nothing is written)."""
    storage = next(s for s in plan.storage if s.name == dataset.storage)
    countries = sorted({storage.country, *storage.replica_countries})
    allowed, refused = [], []
    for country in countries:
        decision = authorizer.decide(
            dataset.owner, "version", f"dataset/{dataset.name}", host_country=country
        )
        if decision.allow is True:
            allowed.append(str(decision.decision_id))
        else:
            refused.append(f"{country}: {', '.join(decision.reasons)} (decision {decision.decision_id})")
    if refused:
        raise PolicyDenied(
            f"a new version of dataset {dataset.name} (residency {dataset.residency}) would be stored "
            f"outside what the policy allows: {'; '.join(refused)}",
            code="version-refused",
            hint=f"storage {storage.name} and its replicas must stay inside {dataset.residency}",
        )
    return allowed


@contextmanager
def _locked(store: DatasetStore) -> Iterator[None]:
    store.root.mkdir(parents=True, exist_ok=True)
    with open(store.root / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _by() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _time(now: datetime | None) -> str:
    return (now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")


def _store_object(store: DatasetStore, source: Path | bytes) -> tuple[str, int]:
    """Put a file (or bytes) into the object store under its SHA-256; an object that exists stays."""
    store.objects.mkdir(parents=True, exist_ok=True)
    if isinstance(source, Path):  # stored before (an unchanged file of the last version): no copy
        sha = _sha256_file(source)
        if store.object(sha).exists():
            return sha, store.object(sha).stat().st_size
    staging = store.objects / f".staging-{os.getpid()}"
    if isinstance(source, bytes):
        staging.write_bytes(source)
    else:
        shutil.copyfile(source, staging)
    sha, size = _sha256_file(staging), staging.stat().st_size
    target = store.object(sha)
    if target.exists():
        staging.unlink()
    else:
        with staging.open("rb") as handle:
            os.fsync(handle.fileno())
        staging.chmod(0o444)
        os.rename(staging, target)
    return sha, size


def _dataset_files(dataset_dir: Path) -> list[tuple[str, Path]]:
    """The dataset's own files (relative path, file); a link is refused: it could point anywhere."""
    found = []
    for path in sorted(dataset_dir.rglob("*")):
        relative = path.relative_to(dataset_dir)
        if relative.parts[0] in NOT_DATA:
            continue
        if path.is_symlink():
            raise DatasetVersionError(
                f"{path} is a link: a version holds files only", code="dataset-link-refused"
            )
        if path.is_file():
            found.append((relative.as_posix(), path))
    return found


def feedback_ids(dataset_dir: Path, version: Version | None) -> frozenset[str] | None:
    """The decision ids of the feedback records a version holds (none for no version), or None when
    an erasure destroyed its feedback file (its manifest still counts them: `feedback.records`)."""
    entry = next((f for f in version.files if f["path"] == FEEDBACK_FILE), None) if version else None
    if entry is not None and entry["state"] != "present":
        return None
    return frozenset(str(r["decision_id"]) for r in _feedback_lines(DatasetStore(dataset_dir), version))


def pending_ids(dataset_dir: Path, dataset: str) -> frozenset[str]:
    """The decision ids of the pending feedback records of `dataset`: what its next version adds."""
    return frozenset(
        str(r["decision_id"]) for _, r in pending_records(dataset_dir) if r.get("dataset") == dataset
    )


def _feedback_lines(store: DatasetStore, latest: Version | None) -> list[dict[str, Any]]:
    if latest is None:
        return []
    entry = next((f for f in latest.files if f["path"] == FEEDBACK_FILE), None)
    if entry is None:
        return []
    if entry["state"] != "present":
        raise DatasetVersionError(f"the feedback of v{latest.number} is {entry['state']}")
    return [json.loads(line) for line in store.object(entry["sha256"]).read_bytes().splitlines()]


def sign_record(record: dict[str, Any], key: ModelKey) -> dict[str, Any]:
    """`record` with the signing key's id and the site's signature (the scheme of promotion records)."""
    private = key.load()
    record = {**record, "key": key_id(private.public_key())}
    signature = private.sign(promotion_body(record), ec.ECDSA(signature_hash(private.public_key())))
    return {**record, "signature": base64.b64encode(signature).decode()}


def _append_lineage(
    store: DatasetStore, history: History, record: dict[str, Any], key: ModelKey
) -> dict[str, Any]:
    signed = sign_record(
        {"format": LINEAGE_FORMAT, "seq": history.records + 1, "after": history.head, **record}, key
    )
    with open(store.lineage, "ab") as handle:
        handle.write(canonical_bytes(signed) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return signed


def _verified_history(store: DatasetStore, key: ModelKey, dataset: str) -> History:
    history = read_history(store.dataset_dir, key.trust, dataset=dataset)
    if not history.ok and history.erasures and _finish_erasures(store, history):
        history = read_history(store.dataset_dir, key.trust, dataset=dataset)
    if not history.ok:
        raise DatasetVersionError(
            f"the versions of dataset {dataset} do not verify: {history.problems[0]}",
            code="dataset-history-invalid",
            hint="restore the dataset's versions folder from the site's backup before making another",
        )
    return history


@dataclass(frozen=True)
class Made:
    version: Version
    added: int  # feedback records new in it
    policy_decisions: tuple[str, ...]
    lineage: dict[str, Any] = field(default_factory=dict)


def create_version(
    *,
    plan: SitePlan,
    dataset: str,
    dataset_dir: Path,
    key: ModelKey,
    authorizer: Authorizer,
    reason: str = "",
    now: datetime | None = None,
) -> Made:
    """A new version: the dataset's files and every feedback record so far, signed; policy first."""
    with _locked(DatasetStore(dataset_dir)):
        return _make_version(
            plan=plan,
            dataset=dataset,
            dataset_dir=dataset_dir,
            key=key,
            authorizer=authorizer,
            reason=reason,
            now=now,
            without_subject=None,
        )


def _make_version(
    *,
    plan: SitePlan,
    dataset: str,
    dataset_dir: Path,
    key: ModelKey,
    authorizer: Authorizer,
    reason: str,
    now: datetime | None,
    without_subject: str | None,
) -> Made:
    planned = plan_dataset(plan, dataset)
    decisions = check_residency(plan, planned, authorizer)  # before anything is written
    store = DatasetStore(dataset_dir)
    history = _verified_history(store, key, dataset)
    latest = history.latest
    records = {r["decision_id"]: r for r in _feedback_lines(store, latest)}
    before = len(records)
    pending = pending_records(dataset_dir)
    for _, record in pending:
        if record.get("dataset") == dataset:
            records.setdefault(str(record["decision_id"]), record)
    if without_subject is not None:
        records = {i: r for i, r in records.items() if r.get("subject") != without_subject}
    files = []
    for relative, path in _dataset_files(dataset_dir):
        sha, size = _store_object(store, path)
        files.append({"path": relative, "sha256": sha, "size": size})
    if records:
        body = b"".join(canonical_bytes(records[i]) + b"\n" for i in sorted(records))
        sha, size = _store_object(store, body)
        files.append({"path": FEEDBACK_FILE, "sha256": sha, "size": size})
    number = (latest.number if latest else 0) + 1
    storage = next(s for s in plan.storage if s.name == planned.storage)
    manifest = sign_record(
        {
            "format": VERSION_FORMAT,
            "dataset": dataset,
            "version": number,
            "previous": latest.digest if latest else None,
            "created": _time(now),
            "by": _by(),
            "reason": reason,
            "owner": planned.owner,
            "classification": planned.classification,
            "residency": planned.residency,
            "residency_countries": list(planned.residency_countries),
            "storage": planned.storage,
            "stored_in": sorted({storage.country, *storage.replica_countries}),
            "policy_decisions": decisions,
            "files": sorted(files, key=lambda f: str(f["path"])),
            "feedback": {"records": len(records), "added": len(records) - min(before, len(records))},
        },
        key,
    )
    target = store.manifest(number)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)  # never rewritten
    with os.fdopen(fd, "wb") as handle:
        handle.write(canonical_bytes(manifest) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    fsync_path(store.root)
    digest = manifest_digest(manifest)
    lineage = _append_lineage(
        store,
        history,
        {
            "kind": "version",
            "dataset": dataset,
            "version": number,
            "digest": digest,
            "time": manifest["created"],
            "by": manifest["by"],
        },
        key,
    )
    for path, record in pending:  # in the version now (or erased): no longer pending
        if record.get("dataset") == dataset:
            path.unlink(missing_ok=True)
    version = read_history(dataset_dir, key.trust, dataset=dataset).find(str(number))
    added = sum(1 for _, r in pending if r.get("dataset") == dataset and r.get("subject") != without_subject)
    return Made(version, added, tuple(decisions), lineage)


def plan_dataset(plan: SitePlan, name: str) -> DatasetPlan:
    found = next((d for d in plan.datasets if d.name == name), None)
    if found is None:
        known = ", ".join(d.name for d in plan.datasets) or "none"
        raise UsageError(f"site {plan.name} has no dataset {name[:80]!r} (datasets: {known})")
    return found


# --- erasure --------------------------------------------------------------------------------------


def subject_digest(dataset: str, subject: str) -> str:
    """How an erasure record names the subject: never the id itself (it may be personal data)."""
    return "sha256:" + hashlib.sha256(f"{dataset}\0{subject}".encode()).hexdigest()


def erase_subject(
    *,
    plan: SitePlan,
    dataset: str,
    dataset_dir: Path,
    key: ModelKey,
    authorizer: Authorizer,
    subject: str,
    authority: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Remove one subject's records: a new version without them, then a signed erasure record in the
    lineage, then the older files that held them destroyed and their manifests marked. The record."""
    if not valid_subject(subject):
        raise UsageError(
            "a subject is 1 to 128 letters, digits or . _ : @ - (starting with a letter or digit)"
        )
    if not authority.strip() or len(authority) > MAX_AUTHORITY or any(ord(c) < 32 for c in authority):
        raise UsageError(
            f"the authority must name who ordered the erasure: 1 to {MAX_AUTHORITY} printable characters"
        )
    store = DatasetStore(dataset_dir)
    with _locked(store):
        history = _verified_history(store, key, dataset)
        affected: dict[str, dict[str, Any]] = {}  # object sha -> what it was in which versions
        for version in history.versions:
            for item in version.files:
                if item["path"] != FEEDBACK_FILE or item["state"] != "present":
                    continue
                if item["sha256"] not in affected and not _holds(store, item["sha256"], subject):
                    continue
                entry = affected.setdefault(
                    item["sha256"], {"path": item["path"], "sha256": item["sha256"], "versions": []}
                )
                entry["versions"].append(version.number)
        pending = sum(1 for _, r in pending_records(dataset_dir) if r.get("subject") == subject)
        erased = {
            r["decision_id"]
            for sha in affected
            for r in map(json.loads, store.object(sha).read_bytes().splitlines())
            if r.get("subject") == subject
        }
        made = _make_version(
            plan=plan,
            dataset=dataset,
            dataset_dir=dataset_dir,
            key=key,
            authorizer=authorizer,
            reason="erasure",
            now=now,
            without_subject=subject,
        )
        history = read_history(dataset_dir, key.trust, dataset=dataset)
        record = _append_lineage(
            store,
            history,
            {
                "kind": "erasure",
                "dataset": dataset,
                "time": _time(now),
                "by": _by(),
                "authority": authority,
                "subject": subject_digest(dataset, subject),
                "records_erased": len(erased),
                "pending_erased": pending,
                "destroyed": sorted(affected.values(), key=lambda d: str(d["sha256"])),
                "new_version": {"version": made.version.number, "digest": made.version.digest},
            },
            key,
        )
        for sha in affected:
            _destroy(store.object(sha))
        for entry in affected.values():
            for number in entry["versions"]:
                _write_mark(store.mark(number, int(record["seq"])), number=number, record=record, entry=entry)
        fsync_path(store.root)
        return record


def _finish_erasures(store: DatasetStore, history: History) -> bool:
    """An erasure interrupted after its signed record (files not yet destroyed, marks not yet written)
    is finished from that record: the record says what to destroy. True when anything was done."""
    done = False
    for record in history.erasures:
        for entry in record.get("destroyed", []):
            target = store.object(str(entry["sha256"]))
            if target.exists():
                _destroy(target)
                done = True
            for number in entry.get("versions", []):
                mark = store.mark(int(number), int(record["seq"]))
                if not mark.exists():
                    _write_mark(mark, number=int(number), record=record, entry=entry)
                    done = True
    return done


def _write_mark(path: Path, *, number: int, record: dict[str, Any], entry: dict[str, Any]) -> None:
    mark = {
        "format": MARK_FORMAT,
        "version": number,
        "erasure": record["seq"],
        "destroyed": [{"path": entry["path"], "sha256": entry["sha256"]}],
        "time": record["time"],
    }
    path.write_bytes(canonical_bytes(mark) + b"\n")


def _holds(store: DatasetStore, sha: str, subject: str) -> bool:
    return any(
        json.loads(line).get("subject") == subject for line in store.object(sha).read_bytes().splitlines()
    )


def _destroy(path: Path) -> None:
    """Overwrite the file's bytes in place, then remove it. (On copy-on-write or log-structured storage
    and on the storage's own snapshots the old blocks may survive: docs/data.md says what to do there.)"""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    path.chmod(0o600)
    with path.open("r+b") as handle:
        handle.write(b"\0" * size)
        handle.flush()
        os.fsync(handle.fileno())
    path.unlink()


def describe_history(history: History) -> list[dict[str, Any]]:
    rows = []
    for version in history.versions:
        manifest = version.manifest
        rows.append(
            {
                "version": version.number,
                "digest": version.digest,
                "created": manifest.get("created"),
                "by": manifest.get("by"),
                "files": len(version.files),
                "destroyed": sum(1 for f in version.files if f["state"] == "destroyed"),
                "feedback": manifest.get("feedback", {}).get("records", 0),
                "classification": manifest.get("classification"),
                "residency": manifest.get("residency"),
            }
        )
    return rows


def marks_of(store: DatasetStore, number: int) -> Sequence[dict[str, Any]]:
    found = []
    for path in sorted(store.root.glob(f"v{number:06d}.erased-*.json")):
        try:
            found.append(json.loads(path.read_bytes()))
        except (OSError, ValueError):
            continue
    return found
