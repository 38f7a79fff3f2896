"""The spec's loop section (docs/loop.md, docs/site-spec.md): per model its trigger, evaluation set,
promotion rules, sign-off and canary. A valid loop reaches the plan field for field; a spec without
one keeps the spec digest and the plan bytes it had before the section existed; every bad value and
every broken cross-reference is refused by `aifactory validate`, naming the file, line and field.
Hostile strings in the loop's string fields are attacked by test_hostile_strings.py (its walk of the
JSON Schema finds them; its site has a loop)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from base_spec import BASE

from aifactory.plan import plan_site
from aifactory.plan.build import on_calendar
from aifactory.plan.model import SitePlan

# BASE's plan and spec digests, computed by main at c4d9832, before the loop section existed.
BASE_BEFORE_LOOP = (
    "sha256:0079966b20fcc557e95d354b3d481a62ce3b4a69fca3b0d7b97c46a5139ebceb",
    "sha256:cb5adc6ac48ac954875b349a421537db6a2715b5c405cee260d261080854e643",
)

# Model triage (owner health, trained on records, served on gpu) evaluated on images, a dataset of
# its owner it never learns from: every field of the section set.
LOOP: dict[str, Any] = {
    "model": "triage",
    "trigger": {"new_samples": 500, "schedule": "Mon,Thu 02:30"},
    "evaluation": {"dataset": "images", "version": 3, "digest": "sha256:" + "ab" * 32},
    "metrics": [
        {"name": "accuracy", "better": "higher", "min_improvement": 0.01, "min_relative_improvement": 0.02},
        {"name": "log-loss", "better": "lower", "tolerance": 0.05},
        {"name": "macro_f1", "better": "higher"},
    ],
    "sign_off": {"by": ["dr.ade@health.example", "ciso@health.example"]},
    "canary": {"share": 0.1, "duration_minutes": 30},
}


def _data(loops: list[dict[str, Any]] | None) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(BASE)
    # A model trained on nothing and one not served, a dataset of another tenant: for the cross-checks.
    data["models"] += [
        {"name": "rules", "owner": "health", "classification": "secret", "storage": "lake"},
        {
            "name": "batch",
            "owner": "health",
            "trained_on": ["records"],
            "classification": "secret",
            "storage": "lake",
        },
    ]
    data["datasets"].append(
        {
            "name": "survey",
            "owner": "research",
            "classification": "internal",
            "residency": "NG",
            "storage": "lake",
            "path": "/research/survey",
        }
    )
    if loops is not None:
        data["loop"] = loops
    return data


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=10_000))
    return path


def _site(tmp_path: Path, loops: list[dict[str, Any]] | None) -> Path:
    return _write(tmp_path, _data(loops))


def test_a_loop_validates_and_reaches_the_plan_field_for_field(tmp_path: Path, cli) -> None:  # noqa: ANN001
    path = _site(tmp_path, [LOOP])
    code, out, err = cli("validate", str(path))
    assert code == 0, out + err
    plan = plan_site(path, write_lock=False).plan
    loop = plan.loop_of("triage")
    assert loop is not None and plan.loop == (loop,) and plan.loop_of("batch") is None
    assert (loop.trigger.new_samples, loop.trigger.schedule) == (500, "Mon,Thu 02:30")
    assert loop.trigger.on_calendar == on_calendar("Mon,Thu 02:30")
    assert (loop.evaluation.dataset, loop.evaluation.version, loop.evaluation.digest) == (
        "images",
        3,
        LOOP["evaluation"]["digest"],
    )
    rules = {
        m.name: (m.better, m.min_improvement, m.min_relative_improvement, m.tolerance) for m in loop.metrics
    }
    # A target has no tolerance; a guard metric without one tolerates nothing (0).
    assert rules == {
        "accuracy": ("higher", 0.01, 0.02, None),
        "log-loss": ("lower", None, None, 0.05),
        "macro_f1": ("higher", None, None, 0),
    }
    assert [m.name for m in loop.targets] == ["accuracy"]
    assert loop.sign_off is not None and loop.sign_off.by == tuple(LOOP["sign_off"]["by"])
    assert loop.canary is not None and (loop.canary.share, loop.canary.duration_minutes) == (0.1, 30)
    assert SitePlan.from_dict(json.loads(plan.to_json())) == plan


def test_the_optional_parts_may_be_left_out(tmp_path: Path, cli) -> None:  # noqa: ANN001
    minimal = {
        "model": "batch",
        "trigger": {"new_samples": 1},
        "evaluation": {"dataset": "images", "version": 1},
        "metrics": [
            {"name": "accuracy", "better": "higher", "min_improvement": 1, "min_relative_improvement": 1}
        ],
    }
    path = _site(tmp_path, [minimal])
    code, out, err = cli("validate", str(path))
    assert code == 0, out + err
    loop = plan_site(path, write_lock=False).plan.loop_of("batch")
    assert loop is not None and loop.sign_off is None and loop.canary is None
    assert (loop.trigger.schedule, loop.trigger.on_calendar, loop.evaluation.digest) == (None, None, None)


def test_the_canarys_judging_settings_reach_the_plan_only_when_given(tmp_path: Path) -> None:
    """Plans of specs written before min_requests, window_seconds and error_margin keep their bytes:
    the canary's plan section has only share and duration_minutes unless the spec gives more."""
    plain = plan_site(_site(tmp_path, [LOOP]), write_lock=False).plan
    assert plain.to_dict()["loop"][0]["canary"] == {"share": 0.1, "duration_minutes": 30}
    given = {"canary.min_requests": 50, "canary.window_seconds": 120, "canary.error_margin": 0.02}
    plan = plan_site(_site(tmp_path, _with(given)), write_lock=False).plan
    assert plan.to_dict()["loop"][0]["canary"] == {
        "share": 0.1,
        "duration_minutes": 30,
        "min_requests": 50,
        "window_seconds": 120,
        "error_margin": 0.02,
    }
    assert SitePlan.from_dict(json.loads(plan.to_json())) == plan
    assert SitePlan.from_dict(json.loads(plain.to_json())) == plain


def test_a_spec_without_a_loop_keeps_its_digests(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(BASE)
    plan = plan_site(path, write_lock=False).plan
    assert plan.loop is None and "loop" not in plan.to_dict()
    assert (plan.digest(), plan.spec_digest) == BASE_BEFORE_LOOP
    with_loop = yaml.safe_load(BASE) | {"loop": [LOOP | {"metrics": LOOP["metrics"][:1]}]}
    path.write_text(yaml.safe_dump(with_loop, sort_keys=False))
    changed = plan_site(path, write_lock=False).plan
    assert changed.spec_digest != BASE_BEFORE_LOOP[1] and changed.to_dict()["loop"][0]["model"] == "triage"


def test_a_grant_to_read_makes_another_tenants_dataset_an_evaluation_set(tmp_path: Path, cli) -> None:  # noqa: ANN001
    data = _data([LOOP | {"evaluation": {"dataset": "survey", "version": 1}}])
    code, out, _ = cli("validate", str(_write(tmp_path, data)), "--format", "json")
    assert code == 1 and "evaluation-set-not-readable" in out
    data["access"].append({"tenant": "health", "resource": "dataset/survey", "actions": ["read"]})
    code, out, err = cli("validate", str(_write(tmp_path, data)))
    assert code == 0, out + err


def _with(change: dict[str, Any]) -> list[dict[str, Any]]:
    """LOOP with some fields replaced: keys are dotted paths (`canary.share`), a value of ... removes."""
    loop = copy.deepcopy(LOOP)
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node: Any = loop
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        key: Any = int(last) if last.isdigit() else last
        if value is ...:
            del node[key]
        else:
            node[key] = value
    return [loop]


TARGET = {"name": "accuracy", "better": "higher", "min_improvement": 0.01, "min_relative_improvement": 0.02}
# (loop section, [(field path, what its message says)])
BAD: dict[str, tuple[list[dict[str, Any]], list[tuple[str, str]]]] = {
    "unknown-model": (_with({"model": "triage2"}), [("loop[0].model", "unknown model 'triage2'")]),
    "model-twice": (
        [LOOP, *_with({"trigger.new_samples": 9})],
        [("loop[1].model", "'triage' has two loops (first at loop[0])")],
    ),
    "model-without-data": (
        _with({"model": "rules", "canary": ...}),
        [("loop[0].model", "trained on no dataset")],
    ),
    "empty-trigger": (
        _with({"trigger": {}}),
        [("loop[0].trigger", "needs new_samples, a schedule, or both")],
    ),
    "zero-samples": (
        _with({"trigger.new_samples": 0}),
        [("loop[0].trigger.new_samples", "greater than or equal to 1")],
    ),
    "samples-as-text": (
        _with({"trigger.new_samples": "500"}),
        [("loop[0].trigger.new_samples", "an integer")],
    ),
    "systemd-range": (
        _with({"trigger.schedule": "Mon..Fri 02:00"}),
        [("loop[0].trigger.schedule", "a schedule")],
    ),
    "hour-24": (_with({"trigger.schedule": "daily 24:00"}), [("loop[0].trigger.schedule", "a schedule")]),
    "raw-calendar": (
        _with({"trigger.schedule": "*-*-* 02:00:00"}),
        [("loop[0].trigger.schedule", "a schedule")],
    ),
    "unit-specifier": (_with({"trigger.schedule": "daily %H"}), [("loop[0].trigger.schedule", "a schedule")]),
    "unknown-eval-set": (
        _with({"evaluation.dataset": "imagez"}),
        [("loop[0].evaluation.dataset", "unknown dataset 'imagez'")],
    ),
    "eval-set-trained-on": (
        _with({"evaluation.dataset": "records"}),
        [("loop[0].evaluation.dataset", "is trained on dataset 'records'")],
    ),
    "eval-set-unreadable": (
        _with({"evaluation.dataset": "survey"}),
        [("loop[0].evaluation.dataset", "neither owns dataset 'survey' nor holds a read grant")],
    ),
    "version-zero": (
        _with({"evaluation.version": 0}),
        [("loop[0].evaluation.version", "greater than or equal to 1")],
    ),
    "version-as-text": (_with({"evaluation.version": "v3"}), [("loop[0].evaluation.version", "an integer")]),
    "bad-digest": (_with({"evaluation.digest": "sha256:AB"}), [("loop[0].evaluation.digest", "a digest")]),
    "no-metrics": (_with({"metrics": []}), [("loop[0].metrics", "at least 1 item")]),
    "no-target": (
        _with({"metrics": LOOP["metrics"][1:]}),
        [("loop[0].metrics", "no metric gives min_improvement and min_relative_improvement")],
    ),
    "zero-improvement": (
        _with({"metrics.0.min_improvement": 0}),
        [("loop[0].metrics[0].min_improvement", "greater than 0")],
    ),
    "zero-relative": (
        _with({"metrics.0.min_relative_improvement": 0}),
        [("loop[0].metrics[0].min_relative_improvement", "greater than 0")],
    ),
    "nan-improvement": (
        _with({"metrics.0.min_improvement": float("nan")}),
        [("loop[0].metrics[0].min_improvement", "finite number")],
    ),
    "only-absolute": (
        _with({"metrics.0.min_relative_improvement": ...}),
        [("loop[0].metrics[0].min_relative_improvement", "min_relative_improvement is missing")],
    ),
    "tolerance-on-target": (
        _with({"metrics.0.tolerance": 0.1}),
        [("loop[0].metrics[0].tolerance", "has no tolerance")],
    ),
    "negative-tolerance": (
        _with({"metrics.1.tolerance": -0.1}),
        [("loop[0].metrics[1].tolerance", "greater than or equal to 0")],
    ),
    "metric-twice": (
        _with({"metrics.2.name": "accuracy"}),
        [("loop[0].metrics[2].name", "'accuracy' is listed twice (first at metrics[0])")],
    ),
    "better-up": (
        _with({"metrics.0.better": "up"}),
        [("loop[0].metrics[0].better", "must be one of higher, lower")],
    ),
    "metric-name-upper": (
        _with({"metrics.0.name": "Accuracy"}),
        [("loop[0].metrics[0].name", "a metric's name")],
    ),
    "signer-twice": (
        _with({"sign_off.by": ["ciso@health.example", "ciso@health.example"]}),
        [("loop[0].sign_off.by[1]", "listed twice")],
    ),
    "no-signer": (_with({"sign_off.by": []}), [("loop[0].sign_off.by", "at least 1 item")]),
    "signer-not-email": (_with({"sign_off.by": ["ciso"]}), [("loop[0].sign_off.by[0]", "an email address")]),
    "share-zero": (_with({"canary.share": 0}), [("loop[0].canary.share", "greater than 0")]),
    "share-one": (_with({"canary.share": 1}), [("loop[0].canary.share", "less than 1")]),
    "share-over-one": (_with({"canary.share": 1.5}), [("loop[0].canary.share", "less than 1")]),
    "share-as-text": (_with({"canary.share": "10%"}), [("loop[0].canary.share", "a number")]),
    "no-duration": (
        _with({"canary.duration_minutes": ...}),
        [("loop[0].canary.duration_minutes", "missing")],
    ),
    "week-and-a-minute": (
        _with({"canary.duration_minutes": 10081}),
        [("loop[0].canary.duration_minutes", "less than or equal to 10080")],
    ),
    "canary-unserved": (_with({"model": "batch"}), [("loop[0].canary", "served nowhere")]),
    "canary-min-requests-zero": (
        _with({"canary.min_requests": 0}),
        [("loop[0].canary.min_requests", "greater than or equal to 1")],
    ),
    "canary-min-requests-as-text": (
        _with({"canary.min_requests": "{{ lookup('pipe', 'id') }}"}),
        [("loop[0].canary.min_requests", "must be an integer")],
    ),
    "canary-min-requests-huge": (
        _with({"canary.min_requests": 10**12}),
        [("loop[0].canary.min_requests", "less than or equal to 1000000")],
    ),
    "canary-window-zero": (
        _with({"canary.window_seconds": 0}),
        [("loop[0].canary.window_seconds", "greater than or equal to 1")],
    ),
    "canary-window-fraction": (
        _with({"canary.window_seconds": 1.5}),
        [("loop[0].canary.window_seconds", "must be an integer")],
    ),
    "canary-window-longer-than-it-runs": (
        _with({"canary.window_seconds": 30 * 60 + 1}),
        [("loop[0].canary.window_seconds", "longer than it runs")],
    ),
    "canary-margin-negative": (
        _with({"canary.error_margin": -0.01}),
        [("loop[0].canary.error_margin", "greater than or equal to 0")],
    ),
    "canary-margin-over-one": (
        _with({"canary.error_margin": 1.5}),
        [("loop[0].canary.error_margin", "less than or equal to 1")],
    ),
    "canary-margin-nan": (
        _with({"canary.error_margin": float("nan")}),
        [("loop[0].canary.error_margin", "finite")],
    ),
    "canary-margin-as-percent": (
        _with({"canary.error_margin": "5%; rm -rf /"}),
        [("loop[0].canary.error_margin", "a number")],
    ),
    "canary-unknown-key": (
        _with({"canary.fraction": 0.1}),
        [("loop[0].canary.fraction", "unknown key 'fraction'")],
    ),
    "unknown-key": (_with({"promote_if": "better"}), [("loop[0].promote_if", "unknown key 'promote_if'")]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_loop_is_refused_naming_the_file_line_and_field(case: str, tmp_path: Path, cli) -> None:  # noqa: ANN001
    loops, expected = BAD[case]
    path = _site(tmp_path, loops)
    code, out, err = cli("validate", str(path), "--format", "json")
    assert code == 1, out + err
    problems = json.loads(out)["error"]["problems"]
    assert [p["path"] for p in problems] == [where for where, _ in expected], problems
    for problem, (_, says) in zip(problems, expected, strict=True):
        assert says in problem["message"], problem
        assert problem["file"] == str(path) and problem["line"], problem


def test_the_line_is_where_the_field_is_written(tmp_path: Path, run_aifactory) -> None:  # noqa: ANN001
    """Plain text, as a separate process: file:line: field: message, no traceback."""
    path = _site(tmp_path, _with({"canary.share": 1.5}))
    result = run_aifactory("validate", str(path))
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "share: 1.5" in text)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert f"{path}:{line}:" in result.stderr and "loop[0].canary.share: " in result.stderr


SCHEDULES = [
    ("hourly", "*-*-* *:00:00"),
    ("daily", "*-*-* 00:00:00"),
    ("weekly", "Mon *-*-* 00:00:00"),
    ("monthly", "*-*-01 00:00:00"),
    ("daily 02:30", "*-*-* 02:30:00"),
    ("Sun 23:59", "Sun *-*-* 23:59:00"),
    ("Mon,Thu 00:05", "Mon,Thu *-*-* 00:05:00"),
]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize(("schedule", "normalized"), SCHEDULES, ids=[s for s, _ in SCHEDULES])
def test_each_schedule_form_is_the_calendar_expression_systemd_reads(schedule: str, normalized: str) -> None:
    """The plan's calendar expression, read by systemd itself, means what the docs say of the form."""
    result = subprocess.run(
        ["systemd-analyze", "calendar", on_calendar(schedule)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert f"Normalized form: {normalized}" in result.stdout
