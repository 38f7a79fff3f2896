"""Feedback on past decisions, on the site storage: what servers on nodes write and read.

Two kinds of small files, both on the site storage every serving node mounts, so that feedback given
to any node finds a decision made on any other:

    <model dir>/decisions/<id[:2]>/<id>.json        a receipt: an allowed inference decision on a model
                                                     trained on data (decision id, tenant, model, digest,
                                                     host, time); what feedback is checked against
    <dataset dir>/feedback/pending/<id>.json         a feedback record, waiting for the next version

A receipt holds no input and no output, only who was answered by what; the decision itself is in the
node's decision log. A feedback record (outcome, subject) is data of the dataset: it lives on the
dataset's storage, inside its residency, and never in the decision log. One feedback per decision
(created exclusively; a second is refused). Every name that becomes a path is checked against its
grammar first: decision ids are 32 lowercase hex digits (optionally `rt-` before them), so no `/`,
`..` or NUL ever reaches the file system.

This module runs on nodes (the server imports it): no torch, nothing of the control host.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifactory.chain import canonical_bytes
from aifactory.durable import fsync_path
from aifactory.errors import FeedbackError
from aifactory.trust.models import RECEIPTS_DIR  # below a model's folder; the inspector leaves it be

FEEDBACK_DIR = "feedback"  # below a dataset's folder
PENDING_DIR = "pending"
RECEIPT_FORMAT = "aifactory.decision-receipt/v1"
FEEDBACK_FORMAT = "aifactory.feedback/v1"
DECISION_ID = re.compile(r"(rt-)?[0-9a-f]{32}")
# A data subject's id as the tenant knows it (a pseudonym, a record number): no path or control characters.
SUBJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
DATASET_NAME = re.compile(r"[a-z][a-z0-9-]{0,19}")  # the spec's name grammar
MAX_OUTCOME_BYTES = 4096  # an outcome is a label or a few fields, not a document


def valid_decision_id(value: str) -> bool:
    return DECISION_ID.fullmatch(value) is not None


def valid_subject(value: str) -> bool:
    return SUBJECT.fullmatch(value) is not None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _create(path: Path, document: dict[str, Any], *, durable: bool) -> None:
    """Write a new file once: O_EXCL, so an existing one is never replaced (FileExistsError)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o640)
    except FileNotFoundError:  # the folder's first file (a mkdir on every write costs a system call)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o640)
    with os.fdopen(fd, "wb") as handle:
        handle.write(canonical_bytes(document) + b"\n")
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    if durable:
        fsync_path(path.parent)


@dataclass(frozen=True)
class Receipt:
    decision_id: str
    tenant: str
    model: str
    digest: str | None
    host: str | None
    time: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": RECEIPT_FORMAT,
            "decision_id": self.decision_id,
            "tenant": self.tenant,
            "model": self.model,
            "digest": self.digest,
            "host": self.host,
            "time": self.time,
        }


def receipt_path(model_dir: Path, decision_id: str) -> Path:
    if not valid_decision_id(decision_id):
        raise FeedbackError("bad-decision-id", f"{decision_id[:80]!r} is not a decision id")
    bare = decision_id.removeprefix("rt-")
    return model_dir / RECEIPTS_DIR / bare[:2] / f"{decision_id}.json"


def write_receipt(
    model_dir: Path, *, decision_id: str, tenant: str, model: str, digest: str | None, host: str | None
) -> Receipt:
    """Leave the receipt of an allowed decision on the storage (not fsync'd: losing the last few in a
    crash loses only the chance to give feedback on them)."""
    receipt = Receipt(decision_id, tenant, model, digest, host, _now())
    _create(receipt_path(model_dir, decision_id), receipt.as_dict(), durable=False)
    return receipt


def forget_receipt(model_dir: Path, decision_id: str) -> None:
    """Remove the receipt of a decision that could not be recorded (best effort)."""
    try:
        receipt_path(model_dir, decision_id).unlink(missing_ok=True)
    except (OSError, FeedbackError):
        pass


def find_receipt(model_dirs: list[Path], decision_id: str) -> Receipt | None:
    """The receipt of `decision_id` in any of these models' folders, whichever node wrote it."""
    for model_dir in model_dirs:
        try:
            document = json.loads(receipt_path(model_dir, decision_id).read_bytes())
        except FileNotFoundError:
            continue
        except ValueError:
            return None  # damaged: no feedback on it
        if not isinstance(document, dict) or document.get("format") != RECEIPT_FORMAT:
            return None
        try:
            return Receipt(
                str(document["decision_id"]),
                str(document["tenant"]),
                str(document["model"]),
                document.get("digest"),
                document.get("host"),
                str(document["time"]),
            )
        except KeyError:
            return None
    return None


@dataclass(frozen=True)
class FeedbackRequest:
    """What a client sends: the dataset (optional when the model was trained on one), the subject the
    outcome is about, and the outcome (any JSON value of at most 4 KiB)."""

    dataset: str | None
    subject: str
    outcome: Any


def parse_feedback(body: bytes) -> FeedbackRequest:
    try:
        document = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise FeedbackError("bad-input", "the body must be JSON") from None
    if not isinstance(document, dict) or set(document) - {"dataset", "subject", "outcome"}:
        raise FeedbackError("bad-input", 'the body must be {"dataset"?, "subject", "outcome"}')
    dataset, subject = document.get("dataset"), document.get("subject")
    if dataset is not None and not (isinstance(dataset, str) and DATASET_NAME.fullmatch(dataset)):
        raise FeedbackError("bad-input", "dataset must be a dataset's name")
    if not (isinstance(subject, str) and valid_subject(subject)):
        raise FeedbackError(
            "bad-input",
            "subject must be 1 to 128 letters, digits or . _ : @ - (starting with a letter or digit)",
        )
    if "outcome" not in document or len(canonical_bytes(document["outcome"])) > MAX_OUTCOME_BYTES:
        raise FeedbackError("bad-input", f"outcome must be a JSON value of at most {MAX_OUTCOME_BYTES} bytes")
    return FeedbackRequest(dataset, subject, document["outcome"])


def pending_dir(dataset_dir: Path) -> Path:
    return dataset_dir / FEEDBACK_DIR / PENDING_DIR


def store_feedback(
    dataset_dir: Path,
    *,
    receipt: Receipt,
    dataset: str,
    request: FeedbackRequest,
    feedback_decision: str,
    host: str | None,
    country: str | None,
) -> dict[str, Any]:
    """Write the feedback record durably (fsync'd, folder too) before the client hears 'accepted'."""
    record = {
        "format": FEEDBACK_FORMAT,
        "decision_id": receipt.decision_id,
        "dataset": dataset,
        "tenant": receipt.tenant,
        "model": receipt.model,
        "model_digest": receipt.digest,
        "decided": receipt.time,
        "subject": request.subject,
        "outcome": request.outcome,
        "received": _now(),
        "received_by": host,
        "received_in": country,
        "feedback_decision": feedback_decision,  # the decision (in that node's log) that let it in
    }
    path = pending_dir(dataset_dir) / f"{receipt.decision_id}.json"
    try:
        _create(path, record, durable=True)
    except FileExistsError:
        message = f"decision {receipt.decision_id} already has feedback"
        raise FeedbackError("feedback-exists", message) from None
    return record


def pending_records(dataset_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every pending feedback record (sorted by decision id); files that are not one are skipped."""
    found: list[tuple[Path, dict[str, Any]]] = []
    try:
        entries = sorted(pending_dir(dataset_dir).iterdir())
    except FileNotFoundError:
        return []
    for path in entries:
        if not (path.suffix == ".json" and valid_decision_id(path.stem)) or path.is_symlink():
            continue
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("format") == FEEDBACK_FORMAT:
            found.append((path, record))
    return found
