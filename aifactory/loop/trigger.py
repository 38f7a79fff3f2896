"""Whether a turn of a model's loop is due by its trigger, and the lock a running turn holds
(docs/loop.md, "The timer").

The timer on the control host starts `aifactory loop run SITE MODEL --if-due` on the trigger's
calendar (`trigger.on_calendar`); this module answers "due?" from what the turn itself works with:

    turn-running         another `aifactory loop run` of the model holds its turn lock: not due
    turn-unfinished      the newest turn has not ended (interrupted, awaiting a sign-off, a canary
                         running): due, a run continues it
    no-champion          nothing to retrain from: not due (a turn would refuse `no-champion`)
    schedule             the trigger has no `new_samples`: the calendar alone decides: due
    enough-new-samples   at least `new_samples` feedback records came in: due
    too-few-new-samples  fewer did: not due

**New samples** are counted as the turn's `version` step takes them in: the feedback records of the
model's training dataset that its next version would hold (the newest version's records and the
pending ones) and that the data version of the last turn did not hold. Before the first turn, every
record counts (the first champion, trained by `aifactory up`, was trained on none). So a refused turn
waits for `new_samples` more records instead of retraining on the same data at each tick.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.data.versions import Version, feedback_ids, pending_ids, read_history
from aifactory.errors import LoopError, TurnRunning
from aifactory.loop.turn import ENDED, LOCK_FILE, Turn, training_dataset, turn_lock, turns, turns_dir
from aifactory.plan.model import LoopPlan, ModelPlan
from aifactory.trust.models import ModelTrust, Registry, read_promotions


@dataclass(frozen=True)
class Due:
    """The answer: due or not, the reason code (module docstring) and the counts behind it."""

    model: str
    due: bool
    reason: str
    detail: str
    new_samples: int | None = None  # the records counted (None where not counted)
    needed: int | None = None  # the trigger's new_samples
    since: dict[str, Any] | None = None  # the data version counted from (the last turn's), or None
    on_calendar: str | None = None  # when the timer looks (None: the timer's default interval)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "due": self.due,
            "reason": self.reason,
            "detail": self.detail,
            "new_samples": self.new_samples,
            "needed": self.needed,
            "since": self.since,
            "on_calendar": self.on_calendar,
        }


def turn_running(state_dir: Path, model: str) -> bool:
    """Whether another process holds the model's turn lock now (probed by taking it for a moment)."""
    if not (turns_dir(state_dir, model) / LOCK_FILE).exists():
        return False
    try:
        with turn_lock(state_dir, model):
            return False
    except TurnRunning:
        return True


def turn_due(
    *,
    loop: LoopPlan,
    model: ModelPlan,
    state_dir: Path,
    model_dir: Path,
    dataset_dir: Path,
    trust: ModelTrust,
) -> Due:
    """Whether a turn of `loop`'s model is due now (the module docstring gives each reason).
    `dataset_dir`: the model's training dataset (its first `trained_on`) as this machine reaches it."""
    calendar = loop.trigger.on_calendar
    needed = loop.trigger.new_samples

    def answer(due: bool, reason: str, detail: str, **counts: Any) -> Due:
        return Due(model.name, due, reason, detail, needed=needed, on_calendar=calendar, **counts)

    if turn_running(state_dir, model.name):
        return answer(False, "turn-running", "another `aifactory loop run` of the model is running")
    found = turns(state_dir, model.name)
    if found and found[-1].status not in ENDED:
        newest = found[-1]
        return answer(True, "turn-unfinished", f"turn {newest.number} is {newest.status}: a run continues it")
    if read_promotions(Registry(model_dir), trust).alias("champion") is None:
        return answer(False, "no-champion", f"model {model.name} has no champion to retrain from")
    if needed is None:
        return answer(True, "schedule", "the trigger has no new_samples: the schedule alone starts turns")
    count, since = new_samples(dataset_dir, training_dataset(model), trust, found)
    counted = f"{count} new feedback records, {needed} needed"
    if count >= needed:
        return answer(True, "enough-new-samples", counted, new_samples=count, since=since)
    return answer(False, "too-few-new-samples", counted, new_samples=count, since=since)


def new_samples(
    dataset_dir: Path, dataset: str, trust: ModelTrust, found: list[Turn]
) -> tuple[int, dict[str, Any] | None]:
    """The feedback records the next version of `dataset` would hold that the last turn's data version
    did not; and that version ({dataset, version, digest}), or None before the first turn."""
    history = read_history(dataset_dir, trust, dataset=dataset)
    if not history.ok:  # the turn would refuse to version over it too
        raise LoopError(
            f"the versions of dataset {dataset} do not verify: {history.problems[0]}",
            code="training-data-unverified",
        )
    latest = history.latest
    current = (feedback_ids(dataset_dir, latest) or frozenset()) | pending_ids(dataset_dir, dataset)
    last = next((t.steps["version"] for t in reversed(found) if "version" in t.steps), None)
    if last is None or last.get("dataset") != dataset:
        return len(current), None
    since = {k: last[k] for k in ("dataset", "version", "digest")}
    base: Version = history.find(str(last["digest"]))
    before = feedback_ids(dataset_dir, base)
    if before is None:  # its feedback file erased since: count by its signed record count
        return max(0, len(current) - int(base.manifest.get("feedback", {}).get("records", 0))), since
    return len(current - before), since
