"""Where a loop turn's canary stands (docs/loop.md, "Canary"), read from the registry alone:

    regressed  a server withdrew it: its rollback record is there and verifies against a serving
               node's key (the turn refuses the candidate, reason `canary-regressed`)
    held       no rollback and `hold` has passed since its canary promotion (the turn promotes it)
    running    neither yet (the turn waits; run it again later)

A rollback record that is there but does not verify is an error (`bad-canary-rollback`): the turn
neither promotes nor refuses on a record it cannot trust.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aifactory.errors import LoopError
from aifactory.plan.model import CanaryPlan
from aifactory.trust.canary import (
    DEFAULT_ERROR_MARGIN,
    DEFAULT_MIN_REQUESTS,
    DEFAULT_WINDOW_SECONDS,
    CanarySettings,
    verify_rollback,
)
from aifactory.trust.models import ModelTrust, Registry, read_promotions

REGRESSED_REASON = "canary-regressed"


@dataclass(frozen=True)
class CanaryState:
    state: str  # running | held | regressed
    since: str  # when the canary was promoted (its record's time)
    rollback: dict[str, Any] | None = None  # the verified rollback record, when regressed

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"state": self.state, "since": self.since}
        if self.rollback is not None:
            found["rollback"] = {k: v for k, v in self.rollback.items() if k != "signature"}
        return found


def settings_of(plan: CanaryPlan) -> CanarySettings:
    """The plan's canary section with the defaults filled in: what the canary's record carries."""
    return CanarySettings(
        share=float(plan.share),
        min_requests=plan.min_requests if plan.min_requests is not None else DEFAULT_MIN_REQUESTS,
        window_seconds=plan.window_seconds if plan.window_seconds is not None else DEFAULT_WINDOW_SECONDS,
        error_margin=float(plan.error_margin) if plan.error_margin is not None else DEFAULT_ERROR_MARGIN,
    )


def canary_state(
    *, model_dir: Path, digest: str, trust: ModelTrust, signers: list[Path], hold: timedelta, now: datetime
) -> CanaryState:
    """Where the canary `digest` stands now (module docstring)."""
    promotion = read_promotions(Registry(model_dir), trust).alias("canary")
    if promotion is None or promotion.digest != digest:
        raise LoopError(f"{digest} is not the canary of {model_dir.name}", code="canary-missing")
    rollback = verify_rollback(model_dir, digest, signers)
    if rollback is not None:
        return CanaryState("regressed", promotion.time, rollback)
    since = datetime.fromisoformat(promotion.time.replace("Z", "+00:00"))
    return CanaryState("held" if now - since >= hold else "running", promotion.time)
