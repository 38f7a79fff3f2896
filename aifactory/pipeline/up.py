"""`aifactory up` and `aifactory down` as library calls: the stages in order, resumable, under the site
lock, with one operator-log record per run."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from aifactory.errors import AifactoryError, PipelineFailed
from aifactory.pipeline.runner import RecordStore, Reporter, StageOutcome, run_stages
from aifactory.pipeline.stages import UpContext, UpOptions, stage_list
from aifactory.plan import PlannedSite, plan_site
from aifactory.state import SiteState


@dataclass(frozen=True)
class UpResult:
    site: str
    outcomes: list[StageOutcome]
    report: str | None
    report_trust: str | None = None  # the allowed_signers to verify the report with

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "stages": [o.as_dict() for o in self.outcomes],
            "report": self.report,
            "report_trust": self.report_trust,
        }


def stage_names() -> list[str]:
    return [stage.name for stage in stage_list()]


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops as cleanly as Ctrl-C: the stage in progress records nothing as done."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def up(
    planned: PlannedSite,
    *,
    options: UpOptions,
    reporter: Reporter,
    start_at: str | None = None,
    lock_wait: float = 0.0,
) -> UpResult:
    """Run the stages for a site planned once, by the caller (the plan stage commits its allocation
    lock when it changed; no stage plans again)."""
    spec_path = Path(planned.loaded.source.file)
    state = SiteState.for_site(planned.plan.name)
    context = UpContext(spec_path=spec_path, state=state, options=options, planned=planned)
    records = RecordStore(state.subdir("up"))
    command = f"up {spec_path}" + (f" --from {start_at}" if start_at else "")
    with state.lock(command, wait=lock_wait), _sigterm_as_interrupt():
        try:
            outcomes = run_stages(
                stage_list(), context, records=records, reporter=reporter, start_at=start_at
            )
        except PipelineFailed as failed:
            state.record(
                command=command,
                result=f"failed at {failed.stage}: {failed.error.code}",
                spec_digest=planned.plan.spec_digest,
            )
            raise
        except KeyboardInterrupt:
            state.record(command=command, result="interrupted", spec_digest=planned.plan.spec_digest)
            raise
        state.record(
            command=command,
            result="ok",
            spec_digest=planned.plan.spec_digest,
            bundle_digest=context.outputs.get("bundle", {}).get("digest"),
        )
    audit = context.outputs.get("audit", {})
    return UpResult(planned.plan.name, outcomes, audit.get("report"), audit.get("trust"))


def down(spec_path: Path, *, lock_wait: float = 0.0) -> list[str]:
    """Tear down what `up` made on this machine: the lab (its hosts, BMCs, services and mounts).
    The state folder (bundle, keys, reports, logs) is kept: it is the site's evidence."""
    from aifactory.lab import lab_down

    planned = plan_site(spec_path, write_lock=False)
    state = SiteState.for_site(planned.plan.name)
    done: list[str] = []
    with state.lock(f"down {spec_path}", wait=lock_wait):
        lab_down(planned.plan.name, lock=False)
        done.append("lab removed")
        records = RecordStore(state.subdir("up"))
        records.forget_from(
            ["lab", "deploy", "scan", "scheduler", "health", "monitoring", "train", "serve", "loop"]
        )
        state.record(command=f"down {spec_path}", result="ok", spec_digest=planned.plan.spec_digest)
    return done


__all__ = ["AifactoryError", "UpOptions", "UpResult", "down", "stage_names", "up"]
