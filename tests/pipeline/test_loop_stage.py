"""`aifactory up`'s loop stage, the parts that need no lab: when it skips and why, the turn's job and
data it asks the lab for, the line an admin reads for a promoted or a refused turn, its inputs, and
its re-check (a re-run with nothing changed says unchanged; a turn that waits or is gone runs again).

Real parts: the lab's own spec and plan, the runner of `aifactory up` with its stage records, turn
records written by aifactory.loop.turn, the runtime's job model. The turn itself (Slurm, the lab's
nodes and servers) runs in tests/pipeline/test_up.py on the lab."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from aifactory.errors import AifactoryError, LoopError
from aifactory.loop.turn import Turn, turns_dir
from aifactory.pipeline import loop_stage
from aifactory.pipeline.runner import RecordStore, Stage, StageOutcome, run_stages
from aifactory.pipeline.stages import UpContext, UpOptions, stage_list, train_job
from aifactory.plan import plan_site
from aifactory.runtime.job import load_job
from aifactory.state import SiteState
from tests.conftest import LAB_SPEC

CHAMPION = "sha256:" + "a" * 64
CHALLENGER = "sha256:" + "b" * 64


class Quiet:
    """A reporter that keeps the outcomes (the CLI's prints them)."""

    def __init__(self) -> None:
        self.outcomes: list[StageOutcome] = []

    def stage_started(self, index: int, total: int, stage: Stage) -> None:
        pass

    def stage_finished(self, index: int, total: int, outcome: StageOutcome) -> None:
        self.outcomes.append(outcome)


def _context(spec: Path, *, lab: bool = True, trained: str | None = CHAMPION) -> UpContext:
    planned = plan_site(spec, write_lock=False)
    context = UpContext(
        spec_path=spec,
        state=SiteState.for_site(planned.plan.name),
        options=UpOptions(lab=lab),
        planned=planned,
    )
    context.outputs["train"] = {"model": "vitals-mlp", "digest": trained} if trained else {}
    return context


@pytest.fixture(autouse=True)
def _state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
def without_loop(tmp_path: Path) -> Path:
    """The lab's spec without its loop entry and the dataset it holds out."""
    data = yaml.safe_load(LAB_SPEC.read_text())
    del data["loop"]
    data["datasets"] = [d for d in data["datasets"] if d["name"] != "vitals-holdout"]
    spec = tmp_path / "site" / "site.yaml"
    spec.parent.mkdir()
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    return spec


def test_the_stage_runs_after_serve_and_before_audit() -> None:
    names = [stage.name for stage in stage_list()]
    assert names[names.index("serve") + 1 : names.index("audit")] == ["loop"]
    (stage,) = [s for s in stage_list() if s.name == "loop"]
    assert stage.verify is not None and not stage.always


def test_without_a_loop_entry_the_stage_is_skipped_and_a_rerun_says_unchanged(without_loop: Path) -> None:
    context = _context(without_loop)
    records = RecordStore(context.state.subdir("up"))
    first, second = Quiet(), Quiet()
    run_stages([loop_stage.loop_stage()], context, records=records, reporter=first)
    run_stages([loop_stage.loop_stage()], context, records=records, reporter=second)
    (skipped,) = first.outcomes
    assert (skipped.status, skipped.summary) == (
        "skipped",
        "no model has a `loop` entry in the spec (docs/loop.md)",
    )
    (again,) = second.outcomes
    assert again.status == "verified" and again.summary.startswith("unchanged"), again
    assert (records.get("loop") or {}).get("status") == "skipped"  # the first run's record stands


def test_on_a_real_site_or_without_a_champion_the_stage_is_skipped_saying_where_turns_run() -> None:
    real = loop_stage.run_loop(_context(LAB_SPEC, lab=False))
    assert real.status == "skipped" and "`aifactory loop run` or the model's timer" in real.summary
    untrained = loop_stage.run_loop(_context(LAB_SPEC, trained=None))
    assert untrained.status == "skipped" and "no champion" in untrained.summary


def test_the_labs_turn_retrains_its_model_on_one_node_from_the_train_stages_settings(tmp_path: Path) -> None:
    context = _context(LAB_SPEC)
    (target,) = loop_stage.loop_targets(context.plan().plan)
    assert (target.model.name, target.dataset.name, target.holdout.name) == (
        "vitals-mlp",
        "vitals",
        "vitals-holdout",
    )
    assert target.host == "lab-cpu-001" and target.entry.evaluation.version == 1
    base = train_job(context)
    job = loop_stage.turn_job(base, target, token_file=tmp_path / "health.token")
    assert job["hosts"] == ["lab-cpu-001"] and job["network"] == base["network"]
    assert job["train"] == {**base["train"], "steps": loop_stage.LOOP_STEPS}
    assert loop_stage.HOLDOUT_SAMPLES > 0 and loop_stage.LOOP_SAMPLES > 1024  # a larger draw than train's
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    parsed = load_job(path)  # a job the runtime accepts
    assert (parsed.dataset, parsed.model, parsed.hosts) == ("vitals", "vitals-mlp", ["lab-cpu-001"])
    assert parsed.train.seed == load_job(_written(tmp_path, base)).train.seed  # the same draw's teacher


def _written(folder: Path, job: dict[str, Any]) -> Path:
    path = folder / "base.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _turn(folder: Path, status: str, **steps: dict[str, Any]) -> Turn:
    turn = Turn(folder, 2, "vitals-mlp", status, dict(steps), list(steps))
    folder.mkdir(parents=True, exist_ok=True)
    turn.save(datetime(2026, 12, 3, tzinfo=UTC))
    return turn


def test_a_promoted_turn_names_the_new_champion_and_a_refused_one_its_reasons(tmp_path: Path) -> None:
    registered = {"register": {"challenger": CHALLENGER, "champion": CHAMPION}}
    promoted = _turn(tmp_path / "p", "promoted", **registered, decide={"reasons": []})
    refused = _turn(
        tmp_path / "r", "refused", **registered, decide={"reasons": ["no-improvement", "metric-regressed"]}
    )
    rolled_back = _turn(
        tmp_path / "c",
        "refused",
        **registered,
        decide={"reasons": []},
        canary={"reasons": ["canary-regressed"]},
    )
    up = loop_stage.turn_outcome(promoted, champion=CHALLENGER)
    down = loop_stage.turn_outcome(refused, champion=CHAMPION)
    assert (up["status"], up["reasons"], up["champion"], up["challenger"]) == (
        "promoted",
        [],
        CHALLENGER,
        CHALLENGER,
    )
    assert down["reasons"] == ["no-improvement", "metric-regressed"] and down["champion"] == CHAMPION
    assert loop_stage.turn_outcome(rolled_back, champion=CHAMPION)["reasons"] == ["canary-regressed"]
    line = loop_stage.summary({"vitals-mlp": up}, {"vitals-mlp": "lab-cpu-001"})
    assert (
        line == f"vitals-mlp turn 2: promoted {CHALLENGER[:19]}... (new champion), answering on lab-cpu-001"
    )
    line = loop_stage.summary({"vitals-mlp": down}, {"vitals-mlp": "lab-cpu-001"})
    assert line == (
        f"vitals-mlp turn 2: refused (no-improvement, metric-regressed); champion {CHAMPION[:19]}... keeps "
        "serving, answering on lab-cpu-001"
    )
    waiting = loop_stage.turn_outcome(
        _turn(tmp_path / "w", "awaiting-sign-off", **registered), champion=CHAMPION
    )
    assert "run `aifactory up` again to continue" in loop_stage.outcome_line("vitals-mlp", waiting)


def test_the_inputs_change_with_the_champion_and_the_job_but_not_with_the_fresh_token() -> None:
    context = _context(LAB_SPEC)
    inputs = loop_stage.loop_inputs(context)
    assert loop_stage.loop_inputs(context) == inputs
    assert "token_file" not in inputs["jobs"]["vitals-mlp"]
    assert inputs["jobs"]["vitals-mlp"]["train"]["steps"] == loop_stage.LOOP_STEPS
    retrained = _context(LAB_SPEC, trained=CHALLENGER)
    assert loop_stage.loop_inputs(retrained) != inputs
    assert loop_stage.loop_inputs(_context(LAB_SPEC, lab=False)) != inputs


def test_a_rerun_checks_the_turn_record_and_runs_again_when_it_waits_or_is_gone() -> None:
    context = _context(LAB_SPEC)
    folder = turns_dir(context.state.subdir("loop"), "vitals-mlp") / "turn-000002"
    registered = {"register": {"challenger": CHALLENGER, "champion": CHAMPION}}
    turn = _turn(folder, "refused", **registered, decide={"reasons": ["no-improvement"]})
    outputs = {"turns": {"vitals-mlp": loop_stage.turn_outcome(turn, champion=CHAMPION)}}
    said = loop_stage.verify_loop(context, outputs)
    refused = f"vitals-mlp turn 2: refused (no-improvement); champion {CHAMPION[:19]}... keeps serving"
    assert said == f"unchanged: {refused}"
    turn.status = "awaiting-sign-off"  # a turn that waits: the stage runs again and continues it
    turn.save(datetime(2026, 12, 3, tzinfo=UTC))
    with pytest.raises(LoopError, match="turn 2 of model vitals-mlp is awaiting-sign-off"):
        loop_stage.verify_loop(context, outputs)
    (folder / "turn.json").unlink()
    with pytest.raises(LoopError, match="not a turn record"):
        loop_stage.verify_loop(context, outputs)


def test_a_promoted_champion_that_no_longer_verifies_makes_the_stage_run_again() -> None:
    context = _context(LAB_SPEC)
    folder = turns_dir(context.state.subdir("loop"), "vitals-mlp") / "turn-000002"
    turn = _turn(folder, "promoted", register={"challenger": CHALLENGER, "champion": CHAMPION})
    outputs = {"turns": {"vitals-mlp": loop_stage.turn_outcome(turn, champion=CHALLENGER)}}
    with pytest.raises(AifactoryError):  # no such version in the (lab's) registry: re-run, not a crash
        loop_stage.verify_loop(context, outputs)


def test_a_failed_turn_says_how_to_go_on_from_up() -> None:
    (target,) = loop_stage.loop_targets(_context(LAB_SPEC).plan().plan)
    failed = LoopError(
        "the train job 12 (loop-vitals-mlp-t1) ended FAILED", code="train-failed", hint="see runs/"
    )
    error = loop_stage._resumable(failed, target)
    assert (error.code, error.exit_code) == ("train-failed", failed.exit_code)
    assert (
        error.message == "loop turn of model vitals-mlp: the train job 12 (loop-vitals-mlp-t1) ended FAILED"
    )
    assert error.hint is not None and error.hint.startswith(
        "see runs/; run `aifactory up` again: it continues"
    )


def test_after_a_refused_turn_the_champions_checkpoint_is_the_latest_again(tmp_path: Path) -> None:
    """The train stage of a later `up` resumes from the latest checkpoint and signs it: never the
    refused challenger's. After a promotion the challenger's checkpoint stays the latest."""
    checkpoints = tmp_path / "model" / "checkpoints"
    for step in (40, 60, 140, 180):
        (checkpoints / f"step-{step:08d}").mkdir(parents=True)
        (checkpoints / f"step-{step:08d}" / "checkpoint.json").write_text("{}")
    (checkpoints / "latest").write_text("step-00000180")
    trained = {"from_champion": CHAMPION, "from_step": 60, "steps": 180}
    promoted = _turn(tmp_path / "p", "promoted", train=trained)
    loop_stage.keep_champion_latest(tmp_path / "model", promoted)
    assert (checkpoints / "latest").read_text() == "step-00000180"
    refused = _turn(tmp_path / "r", "refused", train=trained, decide={"reasons": ["no-improvement"]})
    loop_stage.keep_champion_latest(tmp_path / "model", refused)
    assert (checkpoints / "latest").read_text() == "step-00000060"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000040", "step-00000060"]
