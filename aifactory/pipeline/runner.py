"""Run stages in order, resumably.

Each stage declares the digests of its inputs. After a stage succeeds its record (status, inputs'
digest, time, summary, outputs) is written to `<state>/pipeline/stages.json`. On the next run a stage
whose inputs did not change and whose earlier result still verifies is skipped; a stage whose inputs
changed (its inputs carry the digests of what earlier stages produced), whose check fails, or that failed
last time runs again. `start_at` forces that stage and every later one to run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aifactory.chain import canonical_json
from aifactory.errors import AifactoryError, ExitCode, PipelineFailed, UsageError

RECORDS = "stages.json"


@dataclass
class StageResult:
    status: str  # "ok" | "skipped" (did not apply, with the reason) | "verified" (unchanged, re-checked)
    summary: str
    outputs: dict[str, Any] = field(default_factory=dict)


class StageFunctions(Protocol):
    def __call__(self, context: Any) -> StageResult: ...


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    run: Callable[[Any], StageResult]
    inputs: Callable[[Any], dict[str, Any]] = lambda _context: {}
    # Re-check an earlier result cheaply; return a summary, or raise to make the stage run again.
    verify: Callable[[Any, dict[str, Any]], str] | None = None
    always: bool = False  # runs every time (e.g. the audit report, dated now)


@dataclass
class StageOutcome:
    name: str
    status: str  # ok | verified | skipped | failed | not-run
    seconds: float
    summary: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "summary": self.summary,
        }


class Reporter(Protocol):
    def stage_started(self, index: int, total: int, stage: Stage) -> None: ...
    def stage_finished(self, index: int, total: int, outcome: StageOutcome) -> None: ...


def _digest(inputs: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(inputs).encode()).hexdigest()


class RecordStore:
    """The stage records of one site."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / RECORDS
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                self.records = json.loads(self.path.read_text())
            except ValueError:
                self.records = {}  # a damaged record only costs a full re-run

    def get(self, name: str) -> dict[str, Any] | None:
        return self.records.get(name)

    def put(self, name: str, record: dict[str, Any]) -> None:
        self.records[name] = record
        self._save()

    def forget_from(self, names: Sequence[str]) -> None:
        for name in names:
            self.records.pop(name, None)
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.records, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def run_stages(
    stages: Sequence[Stage],
    context: Any,
    *,
    records: RecordStore,
    reporter: Reporter,
    start_at: str | None = None,
) -> list[StageOutcome]:
    names = [s.name for s in stages]
    if start_at is not None and start_at not in names:
        raise UsageError(f"unknown stage '{start_at}'", hint=f"stages: {', '.join(names)}")
    forced = names.index(start_at) if start_at else len(names)
    outcomes: list[StageOutcome] = []
    for index, stage in enumerate(stages):
        reporter.stage_started(index, len(stages), stage)
        began = time.monotonic()
        try:
            inputs = stage.inputs(context)
            digest = _digest(inputs)
            previous = records.get(stage.name)
            summary: str | None = None
            if previous is not None and not stage.always and index < forced and _reusable(previous, digest):
                summary = _verified(stage, context, previous)
            if previous is not None and summary is not None:
                context.outputs[stage.name] = previous.get("outputs", {})
                result = StageResult("verified", summary, context.outputs[stage.name])
            else:
                result = stage.run(context)
                context.outputs[stage.name] = result.outputs
        except (AifactoryError, OSError) as caught:
            error = (
                caught
                if isinstance(caught, AifactoryError)
                else AifactoryError(
                    f"{stage.name}: {caught}",
                    code="stage-io-error",
                    exit_code=ExitCode.CANNOT_EVALUATE,
                    hint="check the path and free space, then run `aifactory up` again",
                )
            )
            outcome = StageOutcome(stage.name, "failed", time.monotonic() - began, error.message)
            records.put(stage.name, {"status": "failed", "inputs": None, "summary": error.message})
            outcomes.append(outcome)
            reporter.stage_finished(index, len(stages), outcome)
            outcomes += [StageOutcome(s.name, "not-run", 0.0, "") for s in stages[index + 1 :]]
            raise PipelineFailed(outcomes, error) from caught
        except KeyboardInterrupt:
            outcome = StageOutcome(stage.name, "interrupted", time.monotonic() - began, "interrupted")
            outcomes.append(outcome)
            reporter.stage_finished(index, len(stages), outcome)
            raise
        outcome = StageOutcome(stage.name, result.status, time.monotonic() - began, result.summary)
        if result.status != "verified":
            records.put(
                stage.name,
                {
                    "status": result.status,
                    "inputs": digest,
                    "summary": result.summary,
                    "outputs": result.outputs,
                    "seconds": round(outcome.seconds, 2),
                },
            )
        outcomes.append(outcome)
        reporter.stage_finished(index, len(stages), outcome)
    return outcomes


def _reusable(previous: dict[str, Any], digest: str) -> bool:
    """The earlier run succeeded on the same inputs."""
    return previous.get("status") in ("ok", "verified", "skipped") and previous.get("inputs") == digest


def _verified(stage: Stage, context: Any, previous: dict[str, Any]) -> str | None:
    """A summary when the earlier result still holds; None when the stage must run again."""
    if stage.verify is None:
        return f"unchanged: {previous.get('summary', '')}"
    try:
        return stage.verify(context, previous.get("outputs", {}))
    except AifactoryError:
        return None


def exit_code_for(error: AifactoryError) -> ExitCode:
    return error.exit_code
