"""When a loop turn is due by its trigger (`aifactory loop due`, `loop run --if-due`), over a real
registry (a champion signed and promoted with a site key), real signed dataset versions decided by
the real runtime policy, and real pending feedback records; no training (the checkpoint is bytes
that the registry signs as it would any checkpoint; no turn runs a job here). The CLI's exit codes
through `aifactory.cli.main.main`, as a shell or the timer's service sees them.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest
import yaml

from aifactory.cli.main import main
from aifactory.data.feedback import FeedbackRequest, Receipt, store_feedback
from aifactory.data.versions import create_version
from aifactory.errors import TurnRunning
from aifactory.loop.trigger import Due, turn_due
from aifactory.loop.turn import Turn, turn_lock, turns_dir
from aifactory.plan.model import LoopPlan, SitePlan
from aifactory.policy import RuntimeAuthorizer
from aifactory.state import SiteState
from aifactory.trust.issuing.models import ModelKey, ensure_model_key, promote, register

from .conftest import FIXTURES

MODEL = "vitals-mlp"


@dataclass
class Site:
    """The fixture site with its state home and storage below one folder (as `--storage-root`)."""

    root: Path
    plan: SitePlan

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def state(self) -> SiteState:
        return SiteState.for_site(self.plan.name)

    @property
    def key(self) -> ModelKey:
        return ensure_model_key(self.state.subdir("runtime"))

    @property
    def state_dir(self) -> Path:
        return self.state.subdir("loop")

    @property
    def data(self) -> Path:
        return self.storage / "srv/share/datasets/vitals"

    @property
    def model_dir(self) -> Path:
        return self.storage / "srv/share/models" / MODEL

    def loop(self, new_samples: int | None = 3) -> LoopPlan:
        entry = next(e for e in self.plan.loop or () if e.model == MODEL)
        return replace(entry, trigger=replace(entry.trigger, new_samples=new_samples))

    def due(self, new_samples: int | None = 3) -> Due:
        return turn_due(
            loop=self.loop(new_samples),
            model=next(m for m in self.plan.models if m.name == MODEL),
            state_dir=self.state_dir,
            model_dir=self.model_dir,
            dataset_dir=self.data,
            trust=self.key.trust,
        )

    def feedback(self, *ids: int, dataset: str = "vitals") -> None:
        for number in ids:
            decision = f"{number:032x}"
            receipt = Receipt(decision, "health", MODEL, None, "n1", "2026-12-01T00:00:00Z")
            store_feedback(
                self.data,
                receipt=receipt,
                dataset=dataset,
                request=FeedbackRequest(dataset, f"patient-{number}", {"label": number % 4}),
                feedback_decision="d" * 32,
                host="n1",
                country="NG",
            )

    def version(self) -> dict[str, object]:
        made = create_version(
            plan=self.plan,
            dataset="vitals",
            dataset_dir=self.data,
            key=self.key,
            authorizer=RuntimeAuthorizer(self.plan),
        )
        return {"dataset": "vitals", "version": made.version.number, "digest": made.version.digest}

    def turn(self, number: int, status: str, version: dict[str, object] | None) -> None:
        """A turn's record as `run_turn` leaves it (only the fields the trigger reads matter)."""
        folder = turns_dir(self.state_dir, MODEL) / f"turn-{number:06d}"
        folder.mkdir(parents=True)
        steps = {"version": version} if version else {}
        Turn(folder, number, MODEL, status, steps, list(steps)).save(_now())

    def champion(self) -> None:
        """A champion as `aifactory up` leaves one: signed into the registry and promoted."""
        checkpoint = self.model_dir / "checkpoints" / "step-00000020"
        checkpoint.mkdir(parents=True)
        files = {}
        for name in ("model.safetensors", "optimizer.safetensors"):
            body = f"{name} bytes".encode()
            (checkpoint / name).write_bytes(body)
            files[name] = hashlib.sha256(body).hexdigest()
        (checkpoint / "checkpoint.json").write_text(json.dumps({"step": 20, "files": files}))
        version = register(
            model_dir=self.model_dir,
            checkpoint=checkpoint,
            key=self.key,
            job={"name": "up"},
            dataset={"name": "vitals"},
        )
        promote(
            model_dir=self.model_dir, digest=version.digest, alias="champion", key=self.key, reason="first"
        )


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def site(plan: SitePlan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))
    made = Site(tmp_path, plan)
    made.data.mkdir(parents=True)
    (made.data / "samples.csv").write_text("x,y\n1,0\n")
    return made


def test_no_champion_is_not_due_even_with_enough_feedback(site: Site) -> None:
    site.feedback(1, 2, 3)
    due = site.due()
    assert (due.due, due.reason) == (False, "no-champion")


def test_before_the_first_turn_every_feedback_record_counts_once(site: Site) -> None:
    site.champion()
    site.feedback(1, 2)
    assert (site.due().due, site.due().reason, site.due().new_samples) == (False, "too-few-new-samples", 2)
    site.version()  # an operator's `aifactory data version`: the records move into a version, still new
    site.feedback(3)
    due = site.due()
    assert (due.due, due.reason, due.new_samples, due.needed, due.since) == (
        True,
        "enough-new-samples",
        3,
        3,
        None,
    )
    assert due.on_calendar == "*-*-* 02:30:00"


def test_after_a_turn_only_records_its_data_version_did_not_hold_count(site: Site) -> None:
    site.champion()
    site.feedback(1, 2, 3)
    made = site.version()
    site.turn(1, "refused", made)  # refused: the champion serves on, and the same data does not retrigger
    assert (site.due().reason, site.due().new_samples, site.due().since) == ("too-few-new-samples", 0, made)
    site.feedback(4, 5)
    site.version()
    site.feedback(6)
    assert (site.due().reason, site.due().new_samples) == ("enough-new-samples", 3)


def test_feedback_of_another_dataset_does_not_count(site: Site) -> None:
    site.champion()
    site.feedback(1, 2, 3, dataset="vitals-holdout")
    assert (site.due().due, site.due().new_samples) == (False, 0)


def test_an_unfinished_turn_is_due_and_a_schedule_alone_is_due(site: Site) -> None:
    site.champion()
    assert (site.due(new_samples=None).due, site.due(new_samples=None).reason) == (True, "schedule")
    site.turn(1, "awaiting-sign-off", site.version())
    due = site.due()
    assert (due.due, due.reason) == (True, "turn-unfinished")
    assert "turn 1 is awaiting-sign-off" in due.detail


def _hold_lock(state_dir: str, ready: Event, done: Event) -> None:
    with turn_lock(Path(state_dir), MODEL):
        ready.set()
        done.wait(30)


def test_a_turn_running_in_another_process_is_not_due_and_a_second_run_refuses(site: Site) -> None:
    site.champion()
    site.feedback(1, 2, 3)
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(site.state_dir), ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        assert (site.due().due, site.due().reason) == (False, "turn-running")
        with pytest.raises(TurnRunning), turn_lock(site.state_dir, MODEL):
            pass
    finally:
        done.set()
        holder.join(30)
    assert (site.due().due, site.due().reason) == (True, "enough-new-samples")  # released with the process


# --- the CLI ----------------------------------------------------------------------------------------


def _spec(site: Site, trigger: dict[str, object]) -> Path:
    data = yaml.safe_load((FIXTURES / "site.yaml").read_text())
    data["loop"][0]["trigger"] = trigger
    path = site.root / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_loop_due_exits_0_when_due_and_1_when_not(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(site, {"new_samples": 2, "schedule": "Mon,Thu 02:30"})
    site.champion()
    site.feedback(1)
    root = ["--storage-root", str(site.storage)]
    code, out = _cli(capsys, "loop", "due", str(spec), MODEL, *root, "--format", "json")
    answer = json.loads(out)
    assert code == 1
    assert (answer["due"], answer["reason"], answer["new_samples"], answer["needed"]) == (
        False,
        "too-few-new-samples",
        1,
        2,
    )
    assert answer["on_calendar"] == "Mon,Thu *-*-* 02:30:00"
    site.feedback(2)
    code, out = _cli(capsys, "loop", "due", str(spec), MODEL, *root)
    assert (code, out) == (0, f"{MODEL}: due (enough-new-samples): 2 new feedback records, 2 needed\n")


def test_loop_due_of_a_model_without_a_loop_is_a_usage_error(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(site, {"new_samples": 2})
    assert main(["loop", "due", str(spec), "no-such-model", "--storage-root", str(site.storage)]) == 2


def test_run_if_due_when_not_due_exits_0_and_starts_nothing(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not due: no job file is needed, no turn folder is made, no data version is made."""
    spec = _spec(site, {"new_samples": 5})
    site.champion()
    site.feedback(1)
    root = ["--storage-root", str(site.storage)]
    code, out = _cli(capsys, "loop", "run", str(spec), MODEL, "--if-due", *root)
    assert (code, out) == (0, f"{MODEL}: not due (too-few-new-samples): 1 new feedback records, 5 needed\n")
    assert not list(turns_dir(site.state_dir, MODEL).glob("turn-*"))
    assert not (site.data / "versions").exists()


def test_run_if_due_while_a_turn_runs_exits_0_quietly(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(site, {"new_samples": 1})
    site.champion()
    site.feedback(1)
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(site.state_dir), ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        root = ["--storage-root", str(site.storage)]
        code, out = _cli(capsys, "loop", "run", str(spec), MODEL, "--if-due", *root)
        assert (code, out.split(" (")[0]) == (0, f"{MODEL}: not due")
        assert "turn-running" in out
        # without --if-due a run refuses: exit 3, as for a site locked by another command
        (turns_dir(site.state_dir, MODEL) / "job.yaml").write_text("schema: aifactory.job/v1\n")
        assert main(["loop", "run", str(spec), MODEL, *root]) == 3
    finally:
        done.set()
        holder.join(30)
    assert not list(turns_dir(site.state_dir, MODEL).glob("turn-*"))


def test_run_without_a_job_file_names_the_default_place(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(site, {"new_samples": 1})
    site.champion()
    site.feedback(1)
    code = main(["loop", "run", str(spec), MODEL, "--if-due", "--storage-root", str(site.storage)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(turns_dir(site.state_dir, MODEL) / "job.yaml") in err
    assert os.path.isdir(site.data)
