"""The report's AI section: per model the closed loop retrains (docs/loop.md), what serves and how it
got there, checked offline with the site's keys.

    versions     the champion and the canary (the registry's aliases)
    promotions   every promotion record: who, when, why; for a champion or canary of a version the loop
                 trained, its signed promotion decision (reason codes, sign-off)
    refusals     every loop turn refused, with its reason codes; every canary rollback record a server
                 wrote, verified against the serving nodes' decision-log keys
    lineage      the champion's, through aifactory.loop.lineage: promotion, promotion decision,
                 training manifest, dataset versions

Rules: the loop's promotion decisions verify (CM-3); the champion carries the sign-off the loop
requires (CM-3); the champion was evaluated on data it was not trained on (CM-3); the champion's
lineage verifies (SI-7); every canary rollback record verifies (AU-10). A promotion record that
does not verify is the signed-models section's finding (models.promotions-signed): here it fails the
decisions rule without a second finding. The decision-record field mapping (record_keeping) rides
along for the reader.

The first champion (trained before the loop, by `aifactory up` or by hand) has no training manifest
and no decision: its lineage and evaluation are not assessed, and it needs no sign-off.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, RuleResult
from aifactory.audit.record_keeping import DISCLAIMER, as_rows
from aifactory.data.holdout import DatasetVersionFiles, evaluation_overlap
from aifactory.data.versions import manifest_digest, read_history, record_signed
from aifactory.errors import DatasetVersionError, LoopError, ModelRefused, ModelRegistryError
from aifactory.loop.lineage import Link, VersionLineage, promotion_decision, version_lineage
from aifactory.loop.turn import DECISION_FILE, DECISION_FORMAT, Turn, turns
from aifactory.plan.model import LoopPlan, SitePlan
from aifactory.trust.canary import ROLLBACK_DIR, ROLLBACK_SUFFIX, verify_rollback
from aifactory.trust.models import Inspection, Inspector, ModelTrust, ModelVersion, Promotion, Registry

SOURCE = "ai"
TITLE = "AI models: promotions, refusals and lineage"
CHANGE, INTEGRITY, NON_REPUDIATION = "CM-3", "SI-7", "AU-10"
DECISIONS = ("ai.promotion-decisions-verify", "every promotion the loop made names a signed decision")
SIGN_OFF = ("ai.champion-signed-off", "the champion carries the sign-off its loop requires")
HELD_OUT = ("ai.evaluation-set-held-out", "the champion was evaluated on data it was not trained on")
LINEAGE = ("ai.champion-lineage-verifies", "the champion's lineage verifies back to its data")
ROLLBACKS = ("ai.canary-rollbacks-verify", "every canary rollback record verifies against a node key")
CONTROL_OF = {
    DECISIONS: CHANGE,
    SIGN_OFF: CHANGE,
    HELD_OUT: CHANGE,
    LINEAGE: INTEGRITY,
    ROLLBACKS: NON_REPUDIATION,
}
RULES = tuple(CONTROL_OF)


@dataclass
class _Verdicts:
    """What each rule found across the models: assessed at all, and the findings."""

    assessed: set[str] = field(default_factory=set)
    notes: dict[str, list[str]] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)  # a rule that fails with its finding elsewhere
    findings: list[Finding] = field(default_factory=list)

    def finding(self, rule: tuple[str, str], resource: str, message: str, remediation: str) -> None:
        self.assessed.add(rule[0])
        self.findings.append(
            Finding(
                rule=rule[0],
                title=rule[1],
                controls=(CONTROL_OF[rule],),
                severity="high",
                resource=resource,
                message=message,
                remediation=remediation,
                status=FAIL,
                source=SOURCE,
            )
        )

    def note(self, rule: tuple[str, str], text: str) -> None:
        self.notes.setdefault(rule[0], []).append(text)

    def result(self, rule: tuple[str, str]) -> RuleResult:
        failed = rule[0] in self.failed or any(f.rule == rule[0] for f in self.findings)
        status = FAIL if failed else PASS if rule[0] in self.assessed else NOT_ASSESSED
        return RuleResult(rule[0], rule[1], status, SOURCE, "; ".join(self.notes.get(rule[0], [])))


@dataclass(frozen=True)
class AiSources:
    """Where the section reads from: each model's folder and each dataset's (as this machine reaches
    them), the site's model-signing key, the loop's turn records and the nodes' decision-log keys."""

    models: Sequence[tuple[str, Path]]
    datasets: Sequence[tuple[str, Path]]
    trust: Path | None
    loop_state: Path  # <state>/loop
    node_signers: tuple[Path, ...]


def ai_evidence(plan: SitePlan, sources: AiSources) -> Evidence:
    """One section for the models of the site that have a loop and a registry the audit was given."""
    folders = dict(sources.models)
    loops = [entry for entry in plan.loop or () if entry.model in folders]
    mapping = {"disclaimer": DISCLAIMER, "fields": as_rows()}
    if not loops or sources.trust is None:
        note = "no model with a loop and a registry was given to the audit"
        rules = tuple((CONTROL_OF[r], RuleResult(*r, NOT_ASSESSED, SOURCE, note)) for r in RULES)
        return Evidence(SOURCE, TITLE, NOT_ASSESSED, note, {"record_keeping": mapping}, rules)
    trust = ModelTrust(sources.trust)
    verdicts = _Verdicts()
    described = [_model(entry, folders[entry.model], trust, sources, verdicts) for entry in loops]
    rules = tuple((CONTROL_OF[r], verdicts.result(r)) for r in RULES)
    promotions = sum(len(m["promotions"]) for m in described)
    refusals = sum(len(m["refused_turns"]) + len(m["canary_rollbacks"]) for m in described)
    summary = (
        f"{len(described)} model(s) with a loop: {promotions} promotion record(s), {refusals} refusal(s) "
        "(turns refused, canaries withdrawn)"
    )
    status = FAIL if verdicts.findings or verdicts.failed else PASS
    detail = {"models": described, "record_keeping": mapping}
    return Evidence(SOURCE, TITLE, status, summary, detail, rules, tuple(verdicts.findings))


def _model(
    loop: LoopPlan, folder: Path, trust: ModelTrust, sources: AiSources, verdicts: _Verdicts
) -> dict[str, Any]:
    inspector = Inspector(folder, trust)
    inspection = inspector.inspect()
    name = loop.model
    if inspection.promotions.refused:
        verdicts.failed.add(DECISIONS[0])
        verdicts.note(DECISIONS, f"{name}: a promotion record does not verify (models.promotions-signed)")
    promotions = [_promotion(name, p, inspector, trust, verdicts) for p in inspection.promotions.records]
    refused_turns, turn_problems = _refused_turns(name, folder, sources.loop_state, trust, verdicts)
    described: dict[str, Any] = {
        "model": name,
        "champion": _alias(inspection, "champion"),
        "canary": _alias(inspection, "canary"),
        "sign_off_required_from": list(loop.sign_off.by) if loop.sign_off else [],
        "promotions": promotions,
        "refused_turns": refused_turns,
        "turn_records_unreadable": turn_problems,
        "canary_rollbacks": _rollbacks(name, folder, sources.node_signers, verdicts),
    }
    champion = inspection.champion
    if champion is not None:
        described["champion_lineage"] = _champion(loop, inspector, inspection, champion, sources, verdicts)
    return described


def _alias(inspection: Inspection, alias: str) -> dict[str, Any] | None:
    promotion = inspection.promotions.alias(alias)
    if promotion is None:
        return None
    return {
        "digest": promotion.digest,
        "signature_verified": inspection.version(alias) is not None,
        "promoted": promotion.time,
        "by": promotion.by,
    }


def _trained_by_loop(version: ModelVersion) -> bool:
    """Only a loop turn signs a training manifest into a version's provenance."""
    return isinstance(version.provenance.get("training_manifest"), dict)


def _promotion(
    model: str, promotion: Promotion, inspector: Inspector, trust: ModelTrust, verdicts: _Verdicts
) -> dict[str, Any]:
    described: dict[str, Any] = {
        "seq": promotion.seq,
        "alias": promotion.alias,
        "digest": promotion.digest,
        "time": promotion.time,
        "by": promotion.by,
        "reason": promotion.reason,
        "decision": None,
    }
    if promotion.alias not in ("champion", "canary"):
        return described
    version = inspector.verified(promotion.digest)
    if isinstance(version, ModelRefused) or not _trained_by_loop(version):
        described["decision"] = "none: not a version the loop trained"
        return described
    link, record = promotion_decision(inspector.registry, version, trust)
    verdicts.assessed.add(DECISIONS[0])
    described["decision"] = _decision_summary(link, record)
    if not link.verified:
        verdicts.finding(
            DECISIONS,
            f"model/{model}/promotion/{promotion.seq}",
            f"the {promotion.alias} promotion of {promotion.digest}: its promotion decision {link.detail}",
            "restore the run folder's promotion-decision.json from the site's backup; never promote by hand",
        )
    return described


def _decision_summary(link: Link, record: dict[str, Any] | None) -> dict[str, Any]:
    facts = link.facts
    return {
        "digest": link.name,
        "verified": link.verified,
        "detail": link.detail,
        "turn": facts.get("turn"),
        "time": facts.get("time"),
        "promote": (record or {}).get("promote"),
        "reasons": facts.get("reasons"),
        "sign_off": facts.get("sign_off"),
    }


def _champion(
    loop: LoopPlan,
    inspector: Inspector,
    inspection: Inspection,
    champion: ModelVersion,
    sources: AiSources,
    verdicts: _Verdicts,
) -> dict[str, Any]:
    name, resource = loop.model, f"model/{loop.model}/{champion.digest}"
    promotion = inspection.promotions.alias("champion")
    first = promotion is not None and promotion.previous is None
    if not _trained_by_loop(champion):
        why = "the first champion, trained before the loop" if first else "promoted outside the loop"
        for rule in (LINEAGE, HELD_OUT):
            verdicts.note(rule, f"{name}: {why}")
        if loop.sign_off is not None and not first:
            verdicts.finding(
                SIGN_OFF,
                resource,
                f"the champion replaced another without the loop (no promotion decision), so without the "
                f"sign-off the loop requires from {', '.join(loop.sign_off.by)}",
                "promote only through `aifactory loop run`, after `aifactory loop sign-off`",
            )
        return {"digest": champion.digest, "verified": None, "note": why, "links": []}
    found = version_lineage(
        inspector.registry, champion, trust=inspector.trust, dataset_dirs=dict(sources.datasets)
    )
    verdicts.assessed.add(LINEAGE[0])
    for link in found.links:
        if not link.verified:
            verdicts.finding(
                LINEAGE,
                f"{resource}/{link.kind}",
                f"{link.kind} {link.name}: {link.detail}",
                "restore the broken link from the site's backup; `aifactory lineage` shows the chain",
            )
    _check_held_out(loop, resource, found, sources, verdicts)
    _check_sign_off(loop, resource, found.decision, verdicts)
    return {
        "digest": champion.digest,
        "verified": all(link.verified for link in found.links),
        "links": [
            {"kind": link.kind, "name": link.name, "verified": link.verified, "detail": link.detail}
            for link in found.links
        ],
    }


def _loop_evaluation_set(loop: LoopPlan, sources: AiSources) -> DatasetVersionFiles | None:
    """The evaluation set version the spec names for the loop, verified (None when it does not)."""
    folder = dict(sources.datasets).get(loop.evaluation.dataset)
    if folder is None or sources.trust is None:
        return None
    history = read_history(folder, ModelTrust(sources.trust), dataset=loop.evaluation.dataset)
    try:
        return DatasetVersionFiles.of(history.find(str(loop.evaluation.version))) if history.ok else None
    except DatasetVersionError:
        return None


def _check_held_out(
    loop: LoopPlan, resource: str, found: VersionLineage, sources: AiSources, verdicts: _Verdicts
) -> None:
    """No training file is an evaluation file: of the set the decision names, else the spec's."""
    evaluation = found.evaluation or _loop_evaluation_set(loop, sources)
    if found.training is None or evaluation is None:
        verdicts.note(HELD_OUT, f"{loop.model}: the training manifest or the evaluation set does not verify")
        return
    verdicts.assessed.add(HELD_OUT[0])
    for overlap in evaluation_overlap(found.training, evaluation):
        verdicts.finding(
            HELD_OUT,
            f"{resource}/training-manifest",
            f"the training manifest names {overlap.path} of {overlap.dataset} v{overlap.version}, which is "
            f"the evaluation file {overlap.evaluation_path} (same {overlap.match})",
            "retrain on a version without the evaluation set's files; keep a held-out dataset of its own",
        )


def _check_sign_off(
    loop: LoopPlan, resource: str, decision: dict[str, Any] | None, verdicts: _Verdicts
) -> None:
    if loop.sign_off is None:
        verdicts.note(SIGN_OFF, f"{loop.model}: the loop requires no sign-off")
        return
    verdicts.assessed.add(SIGN_OFF[0])
    allowed = loop.sign_off.by
    sign_off = (decision or {}).get("sign_off")
    problem = (
        "its promotion decision does not verify"
        if decision is None
        else "its promotion decision carries no sign-off"
        if not isinstance(sign_off, dict)
        else "the sign-off's signature did not verify"
        if sign_off.get("verified") is not True
        else f"signed off by {sign_off.get('by')}, whom the loop does not name"
        if sign_off.get("by") not in allowed
        else f"the sign-off names {sign_off.get('challenger')}, another version"
        if sign_off.get("challenger") != decision.get("challenger")
        else None
    )
    if problem:
        verdicts.finding(
            SIGN_OFF,
            resource,
            f"the champion was promoted without the sign-off the loop requires from "
            f"{', '.join(allowed)}: {problem}",
            "roll the champion back to the previous one; promote only after `aifactory loop sign-off`",
        )


def _refused_turns(
    model: str, folder: Path, loop_state: Path, trust: ModelTrust, verdicts: _Verdicts
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every refused turn of the model, with its reasons; its signed decision checked when it has one."""
    try:
        found = turns(loop_state, model)
    except LoopError as exc:  # an unreadable turn record: shown, the rest cannot be listed in order
        return [], [exc.message]
    refused = []
    for turn in found:
        if turn.status != "refused":
            continue
        decide, canary = turn.steps.get("decide") or {}, turn.steps.get("canary") or {}
        refused.append(
            {
                "turn": turn.number,
                "challenger": (turn.steps.get("register") or {}).get("challenger"),
                "reasons": list(canary.get("reasons") or decide.get("reasons") or []),
                "decision": _turn_decision(model, folder, turn, trust, verdicts) if decide else None,
            }
        )
    return refused, []


def _turn_decision(model: str, folder: Path, turn: Turn, trust: ModelTrust, verdicts: _Verdicts) -> str:
    """Whether the turn's signed decision file is the one the turn recorded, signed by the site."""
    job = str((turn.steps.get("train") or {}).get("job", ""))
    path = folder / "runs" / job / DECISION_FILE
    verdicts.assessed.add(DECISIONS[0])
    try:
        record = json.loads(path.read_bytes()) if job and "/" not in job else None
    except (OSError, ValueError):
        record = None
    recorded = turn.steps["decide"]
    problem = (
        "is missing or not JSON"
        if not isinstance(record, dict) or record.get("format") != DECISION_FORMAT
        else "does not verify against the site's key"
        if not record_signed(record, trust.load())
        else "is not the decision the turn recorded"
        if manifest_digest(record) != recorded.get("digest")
        else None
    )
    if problem is None:
        return "verified"
    verdicts.finding(
        DECISIONS,
        f"model/{model}/turn/{turn.number}",
        f"turn {turn.number}'s signed promotion decision {problem}",
        "restore the run folder's promotion-decision.json from the site's backup",
    )
    return f"does not verify: {problem}"


def _rollbacks(
    model: str, folder: Path, signers: tuple[Path, ...], verdicts: _Verdicts
) -> list[dict[str, Any]]:
    """Every canary rollback record beside the registry, verified against the nodes' log keys."""
    described = []
    for path in _rollback_files(Registry(folder).root / ROLLBACK_DIR):
        digest = "sha256:" + path.name.removesuffix(ROLLBACK_SUFFIX)
        verdicts.assessed.add(ROLLBACKS[0])
        try:
            record = verify_rollback(folder, digest, list(signers))
        except (ModelRegistryError, ModelRefused) as exc:
            verdicts.finding(
                ROLLBACKS,
                f"model/{model}/canary/{path.name}",
                exc.message,
                "collect the serving nodes' log keys (aifactory audit report --collect-heads); a record no "
                "node key verifies was not written by a server",
            )
            described.append({"canary": digest, "verified": False})
            continue
        keys = ("champion", "reason", "canary_error_rate", "champion_error_rate", "host", "time")
        described.append({"canary": digest, "verified": True, **{k: (record or {}).get(k) for k in keys}})
    return described


def _rollback_files(folder: Path) -> Iterable[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.name.endswith(ROLLBACK_SUFFIX))
    except (FileNotFoundError, NotADirectoryError):
        return []
