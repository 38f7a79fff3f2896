"""One pass of the health gate, as `aifactory health` and `aifactory up`'s health stage both run it:
every chosen host checked, the verdicts applied to Slurm (when the site has Slurm), the run signed
into the state folder, all under the site lock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aifactory.connection import Connection
from aifactory.health.evidence import Evidence, write_evidence
from aifactory.health.run import HealthRun, run_health
from aifactory.health.slurm import apply_verdicts
from aifactory.plan import PlannedSite
from aifactory.runtime.health.model import Level
from aifactory.scheduler.slurm import client_for
from aifactory.state import SiteState

DEFAULT_RUNTIME_PREFIX = Path("/opt/aifactory/current")


@dataclass(frozen=True)
class GateResult:
    run: HealthRun
    evidence: Evidence

    def failures(self) -> list[str]:
        """One line per host that did not pass: host, verdict, reason codes, what Slurm was told."""
        actions = {a["host"]: a["action"] for a in self.run.slurm}
        lines = []
        for host in self.run.failed:
            reasons = ", ".join(host.reasons) or host.error or "no reason given"
            drained = " (drained in Slurm)" if actions.get(host.name) == "drain" else ""
            lines.append(f"{host.name}: {host.verdict} for {reasons}{drained}")
        return lines


def health_gate(
    planned: PlannedSite,
    *,
    connection: Connection,
    state: SiteState,
    level: Level = "quick",
    host_names: Sequence[str] | None = None,
    runtime_prefix: Path = DEFAULT_RUNTIME_PREFIX,
    slurm: bool = True,
) -> GateResult:
    with state.lock("health"):
        run = run_health(
            planned.plan,
            connection=connection,
            level=level,
            host_names=host_names,
            runtime_prefix=runtime_prefix,
            tightenings=planned.spec.health.thresholds if planned.spec.health else (),
        )
        if slurm:
            run.slurm = apply_verdicts(run, client_for(connection))
        evidence = write_evidence(run, state)
    return GateResult(run, evidence)
