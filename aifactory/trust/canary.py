"""Canary settings and the record of a canary withdrawn by a server (docs/loop.md, "Canary").

A promoted candidate first serves as the registry's `canary` alias: its signed promotion record
carries the settings below (`canary`: share, min_requests, window_seconds, error_margin), so every
server reads the same, signed numbers from the registry and needs nothing from the control host.

A server that finds the canary's error rate past the champion's by more than the margin withdraws
it by itself and writes a rollback record beside the registry:

    <model dir>/registry/canary/<version hex>.rolled-back.json

The record (`aifactory.canary-rollback/v1`: model, canary and champion digests, the two error rates,
their request and error counts, the window, the reason and the time) is signed with the node's
decision-log key (SSHSIG, namespace `aifactory-log`: the only namespace that key's allowed_signers
grants; the record's own `format` keeps it apart from a log head), so the control host verifies it
with the allowed_signers it collected from that node, or `ssh-keygen -Y verify` does. Any rollback
file for a canary stops every server sending it traffic, verified or not: a forged one can only send
requests back to the champion, the safe way; the loop turn refuses a candidate only on a record that
verifies.

This module runs on nodes and on the control host: no torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifactory.allowed_signers import AllowedSigners
from aifactory.chain import canonical_bytes
from aifactory.durable import atomic_write
from aifactory.errors import ModelRegistryError, SignatureError
from aifactory.signing import load_private_key, sign, verify
from aifactory.trust.decisionlog import LOG_NAMESPACE
from aifactory.trust.models import REGISTRY_DIR, Registry, hex_of

ROLLBACK_FORMAT = "aifactory.canary-rollback/v1"
ROLLBACK_DIR = "canary"  # below the registry folder
ROLLBACK_SUFFIX = ".rolled-back.json"
MAX_ROLLBACK_BYTES = 64 * 1024  # a record is a few hundred bytes
REASON = "error-rate-above-champion"
SETTINGS_KEYS = frozenset({"share", "min_requests", "window_seconds", "error_margin"})

# Defaults when the spec's canary section leaves them out (docs/site-spec.md).
DEFAULT_MIN_REQUESTS = 20
DEFAULT_WINDOW_SECONDS = 60
DEFAULT_ERROR_MARGIN = 0.05


@dataclass(frozen=True)
class CanarySettings:
    """How a canary is served and judged: the share of a model's requests it answers, and when it is
    withdrawn: its error rate over the last `window_seconds` above the champion's by more than
    `error_margin` (a fraction: 0.05 is five points), once it answered at least `min_requests`."""

    share: float
    min_requests: int = DEFAULT_MIN_REQUESTS
    window_seconds: int = DEFAULT_WINDOW_SECONDS
    error_margin: float = DEFAULT_ERROR_MARGIN

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, value: Any) -> CanarySettings | None:
        """The settings a signed canary promotion carries; None when they are not a valid set (a
        canary without usable settings is not served: the champion answers everything)."""
        if not isinstance(value, dict) or set(value) != SETTINGS_KEYS:
            return None
        share, minimum, window, margin = (
            value["share"],
            value["min_requests"],
            value["window_seconds"],
            value["error_margin"],
        )
        numbers_ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (share, margin))
        counts_ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (minimum, window))
        if not (numbers_ok and counts_ok) or not (0 < share < 1 and 0 <= margin <= 1):
            return None
        if not (1 <= minimum <= 1_000_000 and 1 <= window <= 86_400):
            return None
        return cls(float(share), int(minimum), int(window), float(margin))


def takes_canary(decision_id: str, share: float) -> bool:
    """Whether the canary answers this decision: the first 8 bytes of SHA-256 over its id, as a
    fraction, below the share. Deterministic, so the decision's record and its lineage name exactly
    the model that answered, and any node would route the same id the same way."""
    fraction = int.from_bytes(hashlib.sha256(decision_id.encode()).digest()[:8], "big") / 2**64
    return fraction < share


@dataclass(frozen=True)
class RoleCounts:
    requests: int
    errors: int

    @property
    def rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def rollback_path(model_dir: Path, digest: str) -> Path:
    return Registry(model_dir).root / ROLLBACK_DIR / f"{hex_of(digest)}{ROLLBACK_SUFFIX}"


def rolled_back(model_dir: Path, digest: str) -> bool:
    """A rollback file exists for this canary (verified or not: see the module's docstring)."""
    return rollback_path(model_dir, digest).exists()


def write_rollback(
    *,
    model_dir: Path,
    model: str,
    canary: str,
    champion: str,
    canary_counts: RoleCounts,
    champion_counts: RoleCounts,
    settings: CanarySettings,
    host: str | None,
    key_file: Path,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Sign and write the rollback record of `canary` (durable, 0644: the control host reads it)."""
    record: dict[str, Any] = {
        "format": ROLLBACK_FORMAT,
        "model": model,
        "canary": canary,
        "champion": champion,
        "reason": REASON,
        "canary_error_rate": round(canary_counts.rate, 6),
        "champion_error_rate": round(champion_counts.rate, 6),
        "canary_requests": canary_counts.requests,
        "canary_errors": canary_counts.errors,
        "champion_requests": champion_counts.requests,
        "champion_errors": champion_counts.errors,
        "settings": settings.as_dict(),
        "host": host,
        "time": (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    record["signature"] = sign(canonical_bytes(record), load_private_key(key_file), LOG_NAMESPACE)
    atomic_write(rollback_path(model_dir, canary), canonical_bytes(record) + b"\n", mode=0o644)
    return record


def verify_rollback(model_dir: Path, digest: str, signers: list[Path]) -> dict[str, Any] | None:
    """The rollback record of canary `digest` when one is there and verifies against one of the
    `signers` (allowed_signers files of the serving nodes); None when there is none. A record that is
    there but does not verify raises ModelRegistryError (`bad-canary-rollback`)."""
    path = rollback_path(model_dir, digest)
    where = f"{REGISTRY_DIR}/{ROLLBACK_DIR}/{path.name}"
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_ROLLBACK_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _bad(where, f"cannot be read: {exc}") from None
    try:
        record = json.loads(raw) if len(raw) <= MAX_ROLLBACK_BYTES else None
    except (ValueError, RecursionError):
        record = None
    if not isinstance(record, dict) or record.get("format") != ROLLBACK_FORMAT:
        raise _bad(where, f"not an {ROLLBACK_FORMAT} record")
    if record.get("canary") != digest or record.get("model") != model_dir.name:
        raise _bad(where, "it names another model or canary")
    signature = record.get("signature")
    body = canonical_bytes({k: v for k, v in record.items() if k != "signature"})
    problems: list[str] = []
    for signer_file in signers:
        try:
            verify(
                body,
                str(signature),
                allowed_signers=AllowedSigners.read(signer_file),
                namespace=LOG_NAMESPACE,
            )
        except SignatureError as exc:
            problems.append(f"{signer_file}: {exc.message}")
            continue
        return record
    tried = "; ".join(problems or ["no node keys given"])
    raise _bad(where, f"its signature does not verify against any serving node's key: {tried}")


def _bad(where: str, detail: str) -> ModelRegistryError:
    return ModelRegistryError(
        f"the canary rollback record {where} does not verify: {detail}",
        code="bad-canary-rollback",
        hint="the record is written and signed by the server that withdrew the canary",
    )
