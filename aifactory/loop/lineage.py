"""The lineage of one decision (docs/loop.md; EU AI Act Art. 12): from the decision back to the data
that trained the model that made it, every link checked offline.

    decision           the node's decision log record (its hash chain verified): allowed, and the
                       model version it names (`request.model_digest`); the receipt on the storage
                       (aifactory.data.feedback) names the model and version too, and must agree
    model version      its OpenSSF model signature against the site's model-signing key; its signed
                       provenance (the training job, the dataset version, the training manifest)
    promotion          the signed, chained promotion records that made it champion (or the canary)
    promotion decision the loop's signed decision (policy answer, metrics, evaluation set, sign-off)
                       that the champion (or canary) promotion names
    training manifest  its site signature; every file it names is that file of its dataset version
    dataset version    each training version and the evaluation set's version: its signature, its
                       place in the dataset's signed lineage, every file's SHA-256 (or its signed
                       erasure); its residency, classification and the policy decisions it was made on

Each link is reported verified or broken, with what was wrong; one broken link makes the lineage
unverified. A version trained before the loop existed (the first champion, by `aifactory up`) has no
training manifest and no promotion decision: those links are reported missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifactory.chain import verify_chain
from aifactory.data.feedback import find_receipt
from aifactory.data.holdout import DatasetVersionFiles, TrainingManifest
from aifactory.data.versions import Version, manifest_digest, read_history, record_signed
from aifactory.errors import DatasetVersionError, LoopError, ModelRefused
from aifactory.loop.manifest import verify_training_manifest
from aifactory.loop.turn import DECISION_FILE, DECISION_FORMAT
from aifactory.trust.models import ModelTrust, ModelVersion, Registry, read_promotions, verify_version

MAX_DECISION_BYTES = 1 << 20


@dataclass
class Link:
    kind: str  # decision, model-version, promotion, promotion-decision, training-manifest, dataset-version
    name: str
    verified: bool
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "verified": self.verified,
            "detail": self.detail,
            "facts": self.facts,
        }


@dataclass
class Lineage:
    decision_id: str
    links: list[Link] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return bool(self.links) and all(link.verified for link in self.links)

    @property
    def broken(self) -> list[Link]:
        return [link for link in self.links if not link.verified]

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "verified": self.verified,
            "links": [link.as_dict() for link in self.links],
        }


def lineage(
    decision_id: str,
    *,
    model_dirs: Mapping[str, Path],
    dataset_dirs: Mapping[str, Path],
    trust: ModelTrust,
    decision_logs: Sequence[Path] = (),
) -> Lineage:
    """The chain behind `decision_id`; LoopError when no model of the site knows the decision."""
    receipt = find_receipt(list(model_dirs.values()), decision_id)
    if receipt is None:
        raise LoopError(
            f"no receipt of decision {decision_id[:80]!r} on the site storage: it is not an allowed "
            "inference decision of a model that is served from a mount",
            code="decision-not-found",
        )
    found = Lineage(decision_id)
    found.links.append(_decision_link(decision_id, receipt.model, receipt.digest, decision_logs))
    if receipt.digest is None or receipt.model not in model_dirs:
        return found
    registry = Registry(model_dirs[receipt.model])
    try:
        version = verify_version(registry, registry.version_dir(receipt.digest), trust)
    except ModelRefused as refused:
        found.links.append(Link("model-version", receipt.digest, False, refused.message))
        return found
    found.links.append(version_link(receipt.model, version))
    found.links += version_lineage(registry, version, trust=trust, dataset_dirs=dataset_dirs).links
    return found


def version_link(model: str, version: ModelVersion) -> Link:
    """The link of a model version whose signature verified (verify_version)."""
    provenance = version.provenance
    return Link(
        "model-version",
        version.digest,
        True,
        "its model signature verifies against the site's key",
        {"model": model, "step": provenance.get("step"), "job": provenance.get("job")},
    )


def promotion_decision(
    registry: Registry, version: ModelVersion, trust: ModelTrust
) -> tuple[Link, dict[str, Any] | None]:
    """The `promotion-decision` link of a verified version, and the decision when it verified."""
    links: list[Link] = []
    record = _decision_record(registry, version.provenance, trust, version.digest, links)
    return links[0], record


@dataclass
class VersionLineage:
    """From a verified model version back to its data: the links after `model-version`, and what the
    audit report reads from them (each None when its link is missing or broken)."""

    links: list[Link]
    decision: dict[str, Any] | None = None  # the signed promotion decision that allowed it
    training: TrainingManifest | None = None  # the training manifest, verified
    evaluation: DatasetVersionFiles | None = None  # the evaluation set's version, verified


def version_lineage(
    registry: Registry, version: ModelVersion, *, trust: ModelTrust, dataset_dirs: Mapping[str, Path]
) -> VersionLineage:
    """Promotion, promotion decision, training manifest and dataset versions of `version`, each checked."""
    found = VersionLineage([_promotion_link(registry, trust, version.digest)])
    decision = _decision_record(registry, version.provenance, trust, version.digest, found.links)
    found.decision = decision
    manifest = version.provenance.get("training_manifest")
    if not isinstance(manifest, dict):
        found.links.append(
            Link("training-manifest", "-", False, "the version has none (trained before the loop)")
        )
        return found
    try:
        training = verify_training_manifest(manifest, trust=trust, dataset_dirs=dataset_dirs)
    except LoopError as exc:
        found.links.append(Link("training-manifest", manifest_digest(manifest), False, exc.message))
        return found
    found.training = training
    found.links.append(
        Link(
            "training-manifest",
            manifest_digest(manifest),
            True,
            "signed by the site; every file it names is that file of its dataset version",
            {"job": manifest.get("job"), "datasets": training.identities()},
        )
    )
    wanted = [(d.dataset, d.version, d.digest, "training") for d in training.datasets]
    evaluation = (decision or {}).get("evaluation_set")
    if isinstance(evaluation, dict):
        wanted.append(
            (str(evaluation["dataset"]), int(evaluation["version"]), str(evaluation["digest"]), "evaluation")
        )
    for dataset, number, digest, role in wanted:
        link, verified = _dataset_link(dataset, number, digest, role, dataset_dirs, trust)
        found.links.append(link)
        if role == "evaluation" and verified is not None:
            found.evaluation = DatasetVersionFiles.of(verified)
    return found


def _decision_link(decision_id: str, model: str, digest: str | None, logs: Sequence[Path]) -> Link:
    facts: dict[str, Any] = {"model": model, "model_digest": digest}
    if not logs:
        return Link(
            "decision",
            decision_id,
            False,
            "only the receipt on the storage names it (unsigned): give the decision log it is in",
            facts,
        )
    for log in logs:
        record = _find_record(log, decision_id)
        if record is None:
            continue
        chain = verify_chain(log)
        named = (record.get("request") or {}).get("model_digest")
        problem = (
            f"the decision log's chain does not verify: {chain.problems[0]}"
            if not chain.ok
            else "the decision was not an allow"
            if record.get("allow") is not True
            else f"the log names model version {named}, the receipt {digest}"
            if named != digest
            else None
        )
        facts |= {
            "log": str(log),
            "host": record.get("host"),
            "tenant": record.get("tenant"),
            "time": record.get("time"),
        }
        return Link(
            "decision",
            decision_id,
            problem is None,
            problem or "in the decision log, whose hash chain verifies; it names the model version",
            facts,
        )
    return Link("decision", decision_id, False, "in none of the decision logs given", facts)


def _find_record(log: Path, decision_id: str) -> dict[str, Any] | None:
    try:
        lines = log.read_bytes().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("decision_id") == decision_id:
            return record
    return None


def _promotion_link(registry: Registry, trust: ModelTrust, digest: str) -> Link:
    log = read_promotions(registry, trust)
    records = [p for p in log.records if p.digest == digest]
    facts = {
        "records": [{"seq": p.seq, "alias": p.alias, "time": p.time, "reason": p.reason} for p in records]
    }
    if log.refused:
        return Link(
            "promotion", digest, False, f"a promotion record does not verify: {log.refused[0].detail}", facts
        )
    if any(p.alias == "champion" for p in records):
        return Link("promotion", digest, True, "signed, chained promotion records made it champion", facts)
    if any(p.alias == "canary" for p in records):  # it answered a share of the requests as the canary
        return Link("promotion", digest, True, "signed, chained promotion records made it the canary", facts)
    return Link("promotion", digest, False, "no signed promotion made it champion or canary", facts)


def _decision_record(
    registry: Registry, provenance: Mapping[str, Any], trust: ModelTrust, digest: str, links: list[Link]
) -> dict[str, Any] | None:
    """The loop's signed promotion decision for this version, checked; its link added to `links`."""
    job = (provenance.get("job") or {}).get("name")
    if not isinstance(job, str) or "/" in job or job.startswith("."):
        links.append(Link("promotion-decision", "-", False, "the version names no loop training job"))
        return None
    path = registry.model_dir / "runs" / job / DECISION_FILE
    try:
        with path.open("rb") as handle:
            record = json.loads(handle.read(MAX_DECISION_BYTES))
    except (OSError, ValueError) as exc:
        links.append(Link("promotion-decision", str(path), False, f"cannot be read: {exc}"))
        return None
    name = manifest_digest(record) if isinstance(record, dict) else "-"
    named = any(name in p.reason for p in read_promotions(registry, trust).records if p.digest == digest)
    problem = (
        "not a promotion decision"
        if not isinstance(record, dict) or record.get("format") != DECISION_FORMAT
        else "its signature does not verify against the site's key"
        if not record_signed(record, trust.load())
        else f"it is about {record.get('challenger')}, not this version"
        if record.get("challenger") != digest
        else "it did not promote"
        if record.get("promote") is not True
        else "no champion or canary promotion of this version names it"
        if not named
        else None
    )
    facts = (
        {k: record.get(k) for k in ("turn", "reasons", "metrics", "sign_off", "evaluation_set", "time")}
        if isinstance(record, dict)
        else {}
    )
    links.append(
        Link(
            "promotion-decision",
            name,
            problem is None,
            problem or "signed by the site; the promotion names it",
            facts,
        )
    )
    return record if problem is None else None


def _dataset_link(
    dataset: str, number: int, digest: str, role: str, dataset_dirs: Mapping[str, Path], trust: ModelTrust
) -> tuple[Link, Version | None]:
    """The version's link, and the version when it verified."""
    name = f"{dataset} v{number}"
    if dataset not in dataset_dirs:
        return Link(
            "dataset-version", name, False, f"the site has no dataset {dataset} on a mount", {"role": role}
        ), None
    history = read_history(dataset_dirs[dataset], trust, dataset=dataset)
    try:
        version = history.find(str(number))
    except DatasetVersionError as exc:
        return Link("dataset-version", name, False, exc.message, {"role": role}), None
    manifest = version.manifest
    facts = {
        "role": role,
        "digest": version.digest,
        **{
            k: manifest.get(k)
            for k in ("classification", "residency", "stored_in", "owner", "created", "policy_decisions")
        },
        "feedback_records": (manifest.get("feedback") or {}).get("records", 0),
    }
    mine = [p for p in history.problems if p.startswith(f"v{number:06d}") or p.startswith("lineage")]
    problem = (
        f"its digest is {version.digest}, not {digest}"
        if version.digest != digest
        else mine[0]
        if mine
        else None
    )
    link = Link(
        "dataset-version",
        name,
        problem is None,
        problem or "signed by the site, in the dataset's signed lineage, every file's SHA-256 checks",
        facts,
    )
    return link, version if problem is None else None
