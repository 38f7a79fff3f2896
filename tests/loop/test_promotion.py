"""Promotion by policy (docs/loop.md): the real Rego engine decides on the loop settings the plan
carries, a report, real signed dataset versions and a sign-off; an engine that fails, runs late or
answers nonsense refuses; a report file that is not one is refused naming the file and the field.
Every rule of policies/promotion.rego is tested case by case in policies/promotion_test.rego; here
the Python side around it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from aifactory.data.holdout import DatasetVersionFiles, TrainingManifest
from aifactory.errors import EvaluationReportError
from aifactory.loop.promotion import (
    MAX_REPORT_BYTES,
    EvaluationReport,
    PromotionPolicy,
    SignOff,
    decide_promotion,
    promotion_input,
)
from aifactory.plan.model import LoopPlan, SignOffPlan, SitePlan, section_dict
from aifactory.policy import load_policy_set
from aifactory.policy.engine import make_backend

from .conftest import MakeVersion
from .test_holdout import HOLDOUT, TRAINING

CHAMPION = "sha256:" + "a" * 64
CHALLENGER = "sha256:" + "b" * 64


@pytest.fixture
def loop(plan: SitePlan) -> LoopPlan:
    found = plan.loop_of("vitals-mlp")
    assert found is not None
    return found


@pytest.fixture
def holdout(make_version: MakeVersion) -> DatasetVersionFiles:
    return make_version("vitals-holdout", HOLDOUT)


@pytest.fixture
def training(make_version: MakeVersion) -> TrainingManifest:
    return TrainingManifest((make_version("vitals", TRAINING),))


@pytest.fixture(scope="module")
def policy() -> PromotionPolicy:
    return PromotionPolicy()


def report_data(holdout: DatasetVersionFiles, challenger: dict[str, float] | None = None) -> dict[str, Any]:
    """The champion at 0.80 accuracy; the challenger better by default (0.83: +0.03, 3.75%)."""
    return {
        "format": "aifactory.evaluation-report/v1",
        "model": "vitals-mlp",
        "evaluation_set": holdout.identity(),
        "champion": {"digest": CHAMPION, "metrics": {"accuracy": 0.80, "log-loss": 0.45}},
        "challenger": {"digest": CHALLENGER, "metrics": challenger or {"accuracy": 0.83, "log-loss": 0.46}},
    }


def test_a_better_challenger_is_promoted(
    loop: LoopPlan, holdout: DatasetVersionFiles, training: TrainingManifest, policy: PromotionPolicy
) -> None:
    report = EvaluationReport.parse(report_data(holdout))
    decision = decide_promotion(
        loop=loop, report=report, training=training, evaluation=holdout, sign_off=None, policy=policy
    )
    assert decision.promote and decision.reasons == ()
    assert decision.controls == load_policy_set().packages["promotion"].controls
    assert [(m.metric, m.role, m.champion, m.challenger, m.verdict) for m in decision.metrics] == [
        ("accuracy", "target", 0.80, 0.83, "improved"),
        ("log-loss", "guard", 0.45, 0.46, "within-tolerance"),
    ]
    assert decision.metrics[0].change == pytest.approx(0.03)
    assert decision.metrics[0].relative_change == pytest.approx(0.0375)


def test_a_challenger_trained_on_shuffled_labels_is_refused(
    loop: LoopPlan, holdout: DatasetVersionFiles, training: TrainingManifest, policy: PromotionPolicy
) -> None:
    """Shuffled labels leave a model at chance: worse on the target and on the guard."""
    report = EvaluationReport.parse(report_data(holdout, {"accuracy": 0.21, "log-loss": 1.61}))
    decision = decide_promotion(
        loop=loop, report=report, training=training, evaluation=holdout, sign_off=None, policy=policy
    )
    assert not decision.promote and decision.reasons == ("metric-regressed", "no-improvement")
    rules = load_policy_set().rules
    expected = {c for r in decision.reasons for c in rules[f"promotion.{r}"].controls}
    assert set(decision.controls) == expected
    assert [m.verdict for m in decision.metrics] == ["not-improved", "regressed"]


def test_an_evaluation_file_in_the_training_data_refuses(
    loop: LoopPlan, holdout: DatasetVersionFiles, make_version: MakeVersion, policy: PromotionPolicy
) -> None:
    training = TrainingManifest(
        (make_version("vitals", TRAINING | {"more/labels.bin": HOLDOUT["labels.txt"]}),)
    )
    report = EvaluationReport.parse(report_data(holdout))
    doc = promotion_input(loop=loop, report=report, training=training, evaluation=holdout, sign_off=None)
    assert [(o["path"], o["evaluation_path"], o["match"]) for o in doc["overlap"]] == [
        ("more/labels.bin", "labels.txt", "content")
    ]
    assert doc["loop"] == section_dict(loop) and doc["training"] == training.identities()
    decision = policy.decide(doc)
    assert not decision.promote and decision.reasons == ("eval-set-in-training",)


def test_an_evaluation_on_another_version_of_the_set_refuses(
    loop: LoopPlan, make_version: MakeVersion, training: TrainingManifest, policy: PromotionPolicy
) -> None:
    """The spec's loop names version 1; the job evaluated on version 2."""
    make_version("vitals-holdout", HOLDOUT)
    second = make_version("vitals-holdout", HOLDOUT | {"labels.txt": b"relabelled"})
    report = EvaluationReport.parse(report_data(second))
    decision = decide_promotion(
        loop=loop, report=report, training=training, evaluation=second, sign_off=None, policy=policy
    )
    assert decision.reasons == ("eval-set-mismatch",)


def test_with_sign_off_required_only_a_verified_sign_off_of_this_challenger_promotes(
    loop: LoopPlan, holdout: DatasetVersionFiles, training: TrainingManifest, policy: PromotionPolicy
) -> None:
    needs = dataclasses.replace(loop, sign_off=SignOffPlan(("dr.ade@health.example",)))
    report = EvaluationReport.parse(report_data(holdout))

    def reasons(sign_off: SignOff | None) -> tuple[str, ...]:
        decision = decide_promotion(
            loop=needs, report=report, training=training, evaluation=holdout, sign_off=sign_off, policy=policy
        )
        assert decision.promote == (decision.reasons == ())
        return decision.reasons

    assert reasons(None) == ("sign-off-missing",)
    assert reasons(SignOff("dr.ade@health.example", CHALLENGER, signature_verified=False)) == (
        "sign-off-unverified",
    )
    assert reasons(SignOff("dr.ade@health.example", CHAMPION, signature_verified=True)) == (
        "sign-off-mismatch",
    )
    assert reasons(SignOff("intern@health.example", CHALLENGER, signature_verified=True)) == (
        "sign-off-not-allowed",
    )
    assert reasons(SignOff("dr.ade@health.example", CHALLENGER, signature_verified=True)) == ()


# --- fail closed: the real engine on a copy of the policies with promotion.rego broken -------------

CONFLICT = '\n_boom := 1\n\n_boom := 2\n\nreasons contains "no-champion" if _boom == 1\n'
UNKNOWN_REASON = '\nreasons contains "looks-fine-to-me" if true\n'
SLOW = (
    '\nreasons contains "no-champion" if {\n'
    "\tn := count([x | some x in numbers.range(1, 100000000)])\n\tn < 0\n}\n"
)


def broken_policy(tmp_path: Path, append: str, time_limit_s: float = 10.0) -> PromotionPolicy:
    tree = tmp_path / "policies"
    shutil.copytree(load_policy_set().root, tree)
    module = tree / "promotion.rego"
    module.write_text(module.read_text() + append)
    policies = load_policy_set(tree)
    return PromotionPolicy(policies, backend=make_backend(policies, time_limit_s=time_limit_s))


@pytest.mark.parametrize(
    ("append", "time_limit_s", "reason", "detail"),
    [
        (CONFLICT, 10.0, "engine-error", "promotion.rego"),
        (UNKNOWN_REASON, 10.0, "engine-error", "unknown reasons"),
        (SLOW, 0.5, "engine-timeout", "time limit"),
    ],
    ids=["engine-error", "malformed-answer", "timeout"],
)
def test_an_engine_that_cannot_answer_refuses_the_promotion(
    append: str,
    time_limit_s: float,
    reason: str,
    detail: str,
    tmp_path: Path,
    loop: LoopPlan,
    holdout: DatasetVersionFiles,
    training: TrainingManifest,
) -> None:
    policy = broken_policy(tmp_path, append, time_limit_s)
    report = EvaluationReport.parse(report_data(holdout))  # a challenger the real policy promotes
    decision = decide_promotion(
        loop=loop, report=report, training=training, evaluation=holdout, sign_off=None, policy=policy
    )
    assert not decision.promote and decision.reasons == (reason,) and decision.controls == ("SI-17",)
    assert decision.detail is not None and detail in decision.detail.lower(), decision.detail


# --- the report file ---------------------------------------------------------------------------------


def test_a_report_file_loads(tmp_path: Path, holdout: DatasetVersionFiles) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report_data(holdout)))
    report = EvaluationReport.load(path)
    assert report.challenger.metrics == {"accuracy": 0.83, "log-loss": 0.46}
    assert report.evaluation_set.digest == holdout.digest


def _edit(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return data


HOSTILE_METRIC = "accuracy\x1b[2J\u202e"
# (what, edit of the report or raw file bytes, the field path named, what the message says)
BAD_REPORTS: list[tuple[str, tuple[str, Any] | bytes, str | None, str]] = [
    ("extra-field", ("notes", "trust me"), "notes", "Extra inputs are not permitted"),
    ("long-hostile-key", ("\x1b[2J" + "k" * 5000, 1), None, "Extra inputs are not permitted"),
    ("wrong-format", ("format", "aifactory.evaluation-report/v9"), "format", "Input should be"),
    ("template-model", ("model", "{{ x }}"), "model", "String should match pattern"),
    (
        "hostile-metric-name",
        ("challenger.metrics", {HOSTILE_METRIC: 0.9}),
        None,
        "String should match pattern",
    ),
    (
        "nan-metric",
        ("challenger.metrics", {"accuracy": float("nan")}),
        "challenger.metrics.accuracy",
        "finite",
    ),
    (
        "bool-metric",
        ("challenger.metrics", {"accuracy": True}),
        "challenger.metrics.accuracy",
        "valid number",
    ),
    ("huge-metric", ("challenger.metrics", {"accuracy": 1e300}), "challenger.metrics.accuracy", "less than"),
    ("version-text", ("evaluation_set.version", "1"), "evaluation_set.version", "valid integer"),
    ("bad-digest", ("challenger.digest", "sha256:xyz"), "challenger.digest", "String should match pattern"),
    ("no-challenger", ("challenger", None), "challenger", "valid dictionary"),
    ("not-json", b"{'model': 1}", None, "not JSON"),
    ("not-utf8", b'{"model": "\xff"}', None, "not JSON"),
    ("deep", b"[" * 100_000 + b"]" * 100_000, None, "not JSON"),
    ("too-large", b" " * (MAX_REPORT_BYTES + 1), None, "larger than"),
]


@pytest.mark.parametrize(("what", "bad", "field", "says"), BAD_REPORTS, ids=[b[0] for b in BAD_REPORTS])
def test_a_bad_report_file_is_refused_naming_the_file_and_field(
    what: str,
    bad: tuple[str, Any] | bytes,
    field: str | None,
    says: str,
    tmp_path: Path,
    holdout: DatasetVersionFiles,
) -> None:
    path = tmp_path / "report.json"
    if isinstance(bad, bytes):
        path.write_bytes(bad)
    else:
        path.write_text(json.dumps(_edit(report_data(holdout), *bad)))
    with pytest.raises(EvaluationReportError) as caught:
        EvaluationReport.load(path)
    error = caught.value
    text = json.dumps(error.as_dict(), ensure_ascii=False) + error.render()
    assert error.location.file == str(path) and says in text, text
    if field is not None:
        assert field in [p.location.path for p in error.problems], text
    assert all(p.location.file == str(path) for p in error.problems)
    assert "\x1b" not in text and "\u202e" not in text and "{{" not in text, text
    assert len(text) < 4000, f"{what}: the error repeats the input"
