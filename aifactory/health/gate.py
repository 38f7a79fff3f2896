"""One pass of the health gate, as `aifactory health` and `aifactory up`'s health stage both run it:
every chosen host checked, the verdicts applied to Slurm (when the site has Slurm), the run signed
into the state folder, all under the site lock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aifactory.connection import Connection
from aifactory.health.budget import drain_limits
from aifactory.health.evidence import Evidence, write_evidence
from aifactory.health.node_tasks import install_node_tasks
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
        """One line per host that did not pass: host, verdict, reason codes, what Slurm was told; and
        the incident's line when the drain budget was spent."""
        actions = {a["host"]: a for a in self.run.slurm}
        lines = []
        for host in self.run.failed:
            reasons = ", ".join(host.reasons) or host.error or "no reason given"
            checks = host.failed_checks()
            if checks:
                reasons += f" (checks: {', '.join(checks)})"
            action = actions.get(host.name, {})
            told = ""
            if action.get("action") == "drain":
                told = " (drained in Slurm)"
            elif action.get("over_budget"):
                told = " (left in service: over the drain budget)"
            lines.append(f"{host.name}: {host.verdict} for {reasons}{told}")
        if self.run.incident is not None:
            lines.append(f"incident: {self.run.incident['message']}")
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
            health = planned.spec.health
            limits = drain_limits(planned.plan, health.drain_budget if health else None)
            applied = apply_verdicts(run, client_for(connection), limits)
            run.slurm = applied.actions
            run.incident = applied.incident.as_dict() if applied.incident else None
            # Each compute node's own check (slurmd's HealthCheckProgram) gets its task from here:
            # the spec's tightenings and budget are on the control host only.
            run.node_tasks = install_node_tasks(
                planned.plan,
                [h.plan.host for h in run.hosts if h.reachable],
                connection=connection,
                limits=limits,
                python=str(runtime_prefix / "bin" / "python"),
                tightenings=health.thresholds if health else (),
            )
        evidence = write_evidence(run, state)
        if run.incident is not None:  # the operator log is where an operator looks first
            state.record(
                command="health",
                result="incident",
                spec_digest=planned.plan.spec_digest,
                detail={**run.incident, "evidence": str(evidence.report)},
            )
    return GateResult(run, evidence)
