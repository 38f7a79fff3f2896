"""What an upgrade changes, shown before it starts: the version (the imported bundle's, the new
one's) and the plan (the previous bundle's signed plan against the spec's, which deploy requires to
equal the new bundle's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.bundle.import_record import last_import
from aifactory.deploy.payload import PLAN
from aifactory.errors import PrerequisiteError, UsageError
from aifactory.lifecycle.journal import JournalStore, VersionRef
from aifactory.plan.diff import PlanDiff, diff_plans, read_plan_file
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState


@dataclass(frozen=True)
class Change:
    old: VersionRef
    new: VersionRef
    plan: PlanDiff | None  # None: the previous bundle's plan is not there to compare with

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": {"version": self.old.version, "digest": self.old.digest},
            "to": {"version": self.new.version, "digest": self.new.digest},
            "plan_diff": self.plan.as_dict() if self.plan is not None else None,
        }


def installed_version(state: SiteState) -> tuple[VersionRef, Path]:
    """The version the hosts run now (what the upgrade starts from) and its imported folder: the
    last upgrade's (an aborted upgrade leaves the hosts on the version before the imported bundle),
    else the imported bundle's, which the first deploy installed."""
    record = last_import(state)
    if record is None:
        raise PrerequisiteError(
            f"site {state.site!r} has no imported bundle: there is nothing to upgrade from",
            code="upgrade-nothing-installed",
            hint="import and deploy a first bundle: aifactory bundle import, then aifactory deploy",
        )
    running = JournalStore.for_state(state).running()
    if running is None or running.version == record.version:
        return VersionRef(record.version, record.digest), Path(record.root)
    return running, Path(record.root).parent / running.version  # imports sit side by side


def describe_change(old: VersionRef, old_root: Path, new: VersionRef, plan: SitePlan) -> Change:
    plan_file = old_root / PLAN
    try:
        before = read_plan_file(plan_file)
    except UsageError:  # the previous bundle's folder was cleaned up: the version change still shows
        return Change(old, new, None)
    return Change(old, new, diff_plans(before, plan.to_dict()))
