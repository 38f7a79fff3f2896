"""Promote or refuse a challenger (docs/loop.md): the evaluation report, the policy's input, and the
decision of policies/promotion.rego.

    report (evaluation job) + the model's loop settings (plan) + the challenger's training manifest
    + the evaluation set's files + a sign-off  ->  promotion_input  ->  Rego  ->  PromotionDecision

The report comes from a job on the cluster, so it is read as untrusted input: a strict model, every
field checked, bounded in size. That the evaluation set is not in the training data is computed here
(aifactory.data.holdout) and judged by the policy, with everything else. The policy engine failing,
running late or answering something that is not a decision refuses the promotion (reason
`engine-error` or `engine-timeout`): the champion keeps serving.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aifactory.data.holdout import DatasetVersionFiles, TrainingManifest, evaluation_overlap
from aifactory.errors import AifactoryError, EvaluationReportError, Location, PolicyEngineError, Problem
from aifactory.plan.model import LoopPlan, section_dict
from aifactory.policy.backend import PolicyBackend, engine_error
from aifactory.policy.engine import make_backend
from aifactory.policy.metadata import PolicySet, load_policy_set
from aifactory.policy.runtime import ENGINE_REASONS
from aifactory.spec.loader import format_path
from aifactory.spec.model import MAX_DATASET_VERSION, MAX_METRIC_VALUE, Digest, MetricName, Name

log = logging.getLogger(__name__)

REPORT_FORMAT = "aifactory.evaluation-report/v1"
MAX_REPORT_BYTES = 1 << 20  # a report is a few hundred bytes per metric
MAX_METRICS = 100  # as many as a loop may list
DECISION_PATH = "data.aifactory.promotion.decision"
PACKAGE = "promotion"
VERDICTS = ("improved", "not-improved", "within-tolerance", "regressed", "missing")

MetricValue = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_METRIC_VALUE, le=MAX_METRIC_VALUE)]


class _Report(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class EvaluationSetRef(_Report):
    """The dataset version both models were measured on."""

    dataset: Name
    version: int = Field(ge=1, le=MAX_DATASET_VERSION)
    digest: Digest


class ModelScores(_Report):
    """One model version's metrics on the evaluation set."""

    digest: Digest  # the model version (its registry digest)
    metrics: dict[MetricName, MetricValue] = Field(max_length=MAX_METRICS)


class EvaluationReport(_Report):
    """What the evaluation job writes: the champion's and the challenger's metrics on one set."""

    format: Literal["aifactory.evaluation-report/v1"]
    model: Name
    evaluation_set: EvaluationSetRef
    champion: ModelScores | None  # None: the model has no champion yet
    challenger: ModelScores

    @classmethod
    def load(cls, path: Path) -> EvaluationReport:
        """Read a report file, or EvaluationReportError naming the file and each bad field."""
        where = Location(file=str(path))
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_REPORT_BYTES + 1)
        except OSError as exc:
            raise EvaluationReportError(f"cannot read the evaluation report: {exc}", location=where) from None
        if len(raw) > MAX_REPORT_BYTES:
            raise EvaluationReportError(
                f"refused: the evaluation report is larger than {MAX_REPORT_BYTES} bytes", location=where
            )
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise EvaluationReportError(f"the evaluation report is not JSON: {exc}", location=where) from None
        return cls.parse(data, file=str(path))

    @classmethod
    def parse(cls, data: Any, *, file: str = "<report>") -> EvaluationReport:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = [
                Problem(
                    "bad-report-field",
                    # The model's message without the input: a hostile value is never repeated.
                    str(error["msg"]),
                    Location(file=file, path=_field_path(error["loc"])),
                )
                for error in exc.errors(include_url=False, include_input=False)
            ]
            raise EvaluationReportError(
                f"{len(problems)} problem(s) in the evaluation report",
                location=Location(file=file),
                problems=problems[:50],
                omitted_problems=max(0, len(problems) - 50),
                hint=f"an evaluation report is {REPORT_FORMAT} (docs/loop.md)",
            ) from None


def _field_path(loc: tuple[int | str, ...]) -> str | None:
    """Where a problem is (`challenger.metrics.accuracy`); a key from the file is cut to 60
    characters, its control characters escaped, so a hostile key cannot flood or drive a terminal."""
    cut = tuple(part[:60] + "..." if isinstance(part, str) and len(part) > 60 else part for part in loc)
    return format_path(cut) or None


@dataclass(frozen=True)
class SignOff:
    """A person's sign-off of one challenger. `signature_verified` is what checking its signature
    against the signer's key found (the signed format is not built yet: docs/loop.md)."""

    by: str  # email address
    challenger: str  # the challenger's version digest
    signature_verified: bool

    def as_input(self) -> dict[str, Any]:
        return {"by": self.by, "challenger": self.challenger, "verified": self.signature_verified}


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    role: str  # target | guard
    champion: float | None
    challenger: float | None
    change: float | None  # positive: the challenger is better
    relative_change: float | None  # change over the champion's value (None when that is 0)
    verdict: str  # one of VERDICTS


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reasons: tuple[str, ...]  # sorted reason codes; empty when promoted
    controls: tuple[str, ...]  # the controls of the reasons (of the package when promoted)
    metrics: tuple[MetricComparison, ...]
    detail: str | None = field(default=None, compare=False)  # why the engine gave no decision

    def as_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "reasons": list(self.reasons),
            "controls": list(self.controls),
            "metrics": [vars(m) for m in self.metrics],
            "detail": self.detail,
        }


def promotion_input(
    *,
    loop: LoopPlan,
    report: EvaluationReport,
    training: TrainingManifest,
    evaluation: DatasetVersionFiles,
    sign_off: SignOff | None,
) -> dict[str, Any]:
    """The policy's input: every fact it judges, the evaluation set's overlap with the training data
    computed from the manifests."""
    return {
        "loop": section_dict(loop),
        "report": report.model_dump(mode="json"),
        "evaluation_files": evaluation.identity(),
        "training": training.identities(),
        "overlap": [o.as_dict() for o in evaluation_overlap(training, evaluation)],
        "sign_off": sign_off.as_input() if sign_off is not None else None,
    }


class PromotionPolicy:
    """policies/promotion.rego in the policy engine (each evaluation in a child killed at the limit)."""

    def __init__(self, policies: PolicySet | None = None, *, backend: PolicyBackend | None = None) -> None:
        self.policies = policies or load_policy_set()
        self.backend = backend or make_backend(self.policies)
        self._reason_controls = {
            a.id.split(".", 1)[1]: a.controls for a in self.policies.rules.values() if a.package == PACKAGE
        }
        self._package_controls = self.policies.packages[PACKAGE].controls

    def decide(self, doc: dict[str, Any]) -> PromotionDecision:
        """The policy's decision on a promotion_input, or a refusal when the engine cannot give one."""
        try:
            (value,) = self.backend.evaluate((DECISION_PATH,), doc)
            return self._decision(value)
        except AifactoryError as exc:
            reason = "engine-timeout" if exc.code == "policy-timeout" else "engine-error"
            log.warning("promotion decision failed closed: %s", exc.message)
            return PromotionDecision(False, (reason,), tuple(ENGINE_REASONS[reason]), (), exc.message)

    def _decision(self, value: Any) -> PromotionDecision:
        """The answer checked for shape: anything else is the engine's failure, not a promotion."""
        if not isinstance(value, dict) or set(value) != {"promote", "reasons", "metrics"}:
            raise _malformed(f"the promotion policy answered {str(value)[:200]}")
        reasons, promote = value["reasons"], value["promote"]
        if not isinstance(reasons, list) or any(r not in self._reason_controls for r in reasons):
            raise _malformed(f"the promotion policy gave unknown reasons {str(reasons)[:200]}")
        if not isinstance(promote, bool) or promote != (not reasons):
            raise _malformed("the promotion policy's answer contradicts itself (promote with reasons)")
        if not isinstance(value["metrics"], list):
            raise _malformed("the promotion policy gave no metric comparisons")
        controls = (
            sorted({c for r in reasons for c in self._reason_controls[r]})
            if reasons
            else self._package_controls
        )
        return PromotionDecision(
            promote, tuple(sorted(reasons)), tuple(controls), tuple(_comparison(m) for m in value["metrics"])
        )


def decide_promotion(
    *,
    loop: LoopPlan,
    report: EvaluationReport,
    training: TrainingManifest,
    evaluation: DatasetVersionFiles,
    sign_off: SignOff | None,
    policy: PromotionPolicy | None = None,
) -> PromotionDecision:
    """Promote or refuse the report's challenger, by the promotion policy."""
    doc = promotion_input(
        loop=loop, report=report, training=training, evaluation=evaluation, sign_off=sign_off
    )
    return (policy or PromotionPolicy()).decide(doc)


def _comparison(item: Any) -> MetricComparison:
    keys = {"metric", "role", "champion", "challenger", "change", "relative_change", "verdict"}
    if not isinstance(item, dict) or set(item) != keys or item["verdict"] not in VERDICTS:
        raise _malformed(f"a malformed metric comparison {str(item)[:200]}")
    champion, challenger, change, relative = (
        _number(item[k], item) for k in ("champion", "challenger", "change", "relative_change")
    )
    return MetricComparison(
        str(item["metric"]), str(item["role"]), champion, challenger, change, relative, str(item["verdict"])
    )


def _number(value: Any, item: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _malformed(f"a metric comparison with a value that is not a number {str(item)[:200]}")
    return float(value)


def _malformed(message: str) -> PolicyEngineError:
    return engine_error(f"malformed policy answer: {message}", code="policy-malformed-answer")
