"""One health run: every chosen host's checks in parallel over the Connection, the clock against
this host, the pool's all-reduce (standard level), and the health policy's verdict per host."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifactory.connection import Connection
from aifactory.errors import HealthError, UsageError
from aifactory.health.remote import RemoteResult, clock_samples, run_on_host
from aifactory.health.tasks import COMPUTE_ROLES, HostPlan, plan_hosts
from aifactory.health.thresholds import compute_fabric, load_table
from aifactory.plan.model import Host, SitePlan
from aifactory.policy.backend import PolicyBackend
from aifactory.policy.engine import make_backend
from aifactory.policy.metadata import load_policy_set
from aifactory.runtime.health.model import LEVELS, Level, Measurement
from aifactory.spec.model import HealthThreshold

DECISION_PATH = "data.aifactory.health.decision"
HOST_TIMEOUT_S = 300.0
ALLREDUCE_PORT = 29611
ALLREDUCE_BYTES = 4 * 2**20
ALLREDUCE_ITERATIONS = 3
ALLREDUCE_TIMEOUT_S = 90.0
CLOCK_PROBES = 5
MAX_PARALLEL = 32


@dataclass
class HostResult:
    plan: HostPlan
    reachable: bool = False
    measurements: list[Measurement] = field(default_factory=list)
    error: str | None = None
    verdict: str = "drain"
    reasons: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.plan.host.name

    def rows(self) -> list[dict[str, Any]]:
        """One row per measurement: value, threshold and whether it passed."""
        crossed = {(f["check"], f["subject"]) for f in self.failures}
        rows = []
        for m in self.measurements:
            threshold = self.plan.thresholds.get(m.check)
            rows.append(
                {
                    "check": m.check,
                    "subject": m.subject,
                    "value": m.value,
                    "unit": m.unit,
                    "threshold": threshold.describe() if threshold else None,
                    "result": self._result(m, crossed, threshold is not None),
                    "error": m.error,
                }
            )
        return rows

    def _result(self, m: Measurement, crossed: set[tuple[str, str]], judged: bool) -> str:
        if (m.check, m.subject) not in crossed:
            return "pass" if judged else "info"
        # crossed, but the policy blames another host (a slow all-reduce on the slow link's host)
        return "fail" if m.check in self.reasons or m.value is None else "excused"

    def failed_checks(self) -> list[str]:
        """The checks behind a failing verdict by name (a reason code such as `measurement-missing`
        says what went wrong, not where): each check with a failing row or a measurement that
        failed, and each expected check that has no measurement at all."""
        failing = {row["check"] for row in self.rows() if row["result"] == "fail"}
        failing |= {m.check for m in self.measurements if m.value is None}  # could not measure
        measured = {m.check for m in self.measurements}
        return sorted(failing | {check for check in self.plan.expected if check not in measured})

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.name,
            "pool": self.plan.host.pool,
            "role": self.plan.host.role,
            "reachable": self.reachable,
            "error": self.error,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "expected": list(self.plan.expected),
            "thresholds": {
                c: {**t.as_policy(), "profile": t.profile} for c, t in sorted(self.plan.thresholds.items())
            },
            "measurements": [m.as_dict() for m in self.measurements],
            "rows": self.rows(),
            "failures": self.failures,
        }


@dataclass
class HealthRun:
    site: str
    level: Level
    started: str
    finished: str = ""
    hosts: list[HostResult] = field(default_factory=list)
    slurm: list[dict[str, Any]] = field(default_factory=list)
    # The drain budget's incident (aifactory.health.budget.Incident.as_dict()), when it was spent.
    incident: dict[str, Any] | None = None
    # The node task files written for the compute nodes' own checks: host -> installed | unchanged | why not.
    node_tasks: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[HostResult]:
        return [h for h in self.hosts if h.verdict != "admit"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "aifactory.health-run/v1",
            "site": self.site,
            "level": self.level,
            "started": self.started,
            "finished": self.finished,
            "hosts": [h.as_dict() for h in self.hosts],
            "slurm": self.slurm,
            "incident": self.incident,
            "node_tasks": self.node_tasks,
            "summary": {
                "hosts": len(self.hosts),
                "admitted": sum(1 for h in self.hosts if h.verdict == "admit"),
                "drained": sum(1 for h in self.hosts if h.verdict == "drain"),
                "kept_out": sum(1 for h in self.hosts if h.verdict == "keep-out"),
            },
        }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def choose_hosts(plan: SitePlan, names: Sequence[str] | None) -> list[Host]:
    if not names:
        return list(plan.hosts)
    known = {host.name: host for host in plan.hosts}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(
            f"no host {', '.join(unknown)} in the plan of site {plan.name}", hint="see aifactory plan SITE"
        )
    return [known[name] for name in dict.fromkeys(names)]


def run_health(
    plan: SitePlan,
    *,
    connection: Connection,
    level: Level = "quick",
    host_names: Sequence[str] | None = None,
    runtime_prefix: Path = Path("/opt/aifactory/current"),
    table_file: Path | None = None,
    tightenings: Sequence[HealthThreshold] = (),
) -> HealthRun:
    if level not in LEVELS:
        raise UsageError(f"unknown level {level!r}", hint=f"use one of: {', '.join(LEVELS)}")
    table = load_table(table_file)
    hosts = choose_hosts(plan, host_names)
    run = HealthRun(plan.name, level, _now())
    run.hosts = [
        HostResult(p)
        for p in plan_hosts(
            plan, hosts, level=level, connection=connection, table=table, tightenings=tightenings
        )
    ]
    python = str(runtime_prefix / "bin" / "python")
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, max(1, len(run.hosts)))) as pool:
        list(pool.map(lambda result: _node_checks(connection, python, result), run.hosts))
        list(
            pool.map(lambda result: _clock(connection, python, result), [h for h in run.hosts if h.reachable])
        )
    if level != "quick":
        _collectives(plan, connection, python, run.hosts)
    _judge(run.hosts)
    run.finished = _now()
    return run


def _node_checks(connection: Connection, python: str, result: HostResult) -> None:
    host = result.plan.host
    answer = run_on_host(
        connection,
        host.management_address,
        [python, "-m", "aifactory.runtime.health"],
        input_text=json.dumps(result.plan.task.as_dict()),
        timeout=HOST_TIMEOUT_S,
    )
    report = _report(answer)
    if report is None:
        result.error = _why(answer)
        return
    result.reachable = True
    result.measurements = [Measurement(**m) for m in report["measurements"]]


def _report(answer: RemoteResult) -> dict[str, Any] | None:
    if answer.returncode != 0:
        return None
    try:
        report = json.loads(answer.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return report if isinstance(report, dict) and isinstance(report.get("measurements"), list) else None


def _why(answer: RemoteResult) -> str:
    lines = (answer.stderr or answer.stdout).strip().splitlines()
    return f"exit {answer.returncode}: {lines[-1] if lines else 'no output'}"[:300]


def _clock(connection: Connection, python: str, result: HostResult) -> None:
    """Offset bound of the host's clock against this host's (NTP's reasoning over one ssh session:
    the host's reading against each exchange's midpoint, plus half the exchange); the tightest of a
    few exchanges is kept."""
    samples, error = clock_samples(
        connection, result.plan.host.management_address, python, rounds=CLOCK_PROBES, timeout=60
    )
    if not samples:
        result.measurements.append(
            Measurement.failed("clock-offset", "control-host", "s", f"no time from the host: {error}")
        )
        return
    best = min(samples, key=lambda sample: sample.bound)
    raw = (
        f"sent {best.sent_at:.6f} host {best.remote:.6f} answered {best.answered_at:.6f} "
        f"({len(samples)} exchanges)"
    )
    result.measurements.append(Measurement("clock-offset", "control-host", round(best.bound, 4), "s", raw))


def _collectives(plan: SitePlan, connection: Connection, python: str, results: list[HostResult]) -> None:
    """One all-reduce per compute pool, every reachable member at once; each member keeps its own
    measurement (an unreachable member leaves the others to time out: a failed measurement)."""
    pools: dict[str, list[HostResult]] = {}
    for result in results:
        host = result.plan.host
        if (
            host.role in COMPUTE_ROLES
            and compute_fabric(plan, host) is not None
            and "allreduce-busbw" in result.plan.expected
        ):
            pools.setdefault(host.pool, []).append(result)
    for offset, members in enumerate(pools.values()):
        _pool_allreduce(connection, python, members, ALLREDUCE_PORT + offset)


def _pool_allreduce(connection: Connection, python: str, members: list[HostResult], port: int) -> None:
    master = members[0].plan.host.compute_address
    with ThreadPoolExecutor(max_workers=len(members)) as pool:
        for rank, member in enumerate(members):
            pool.submit(_allreduce, connection, python, member, rank, len(members), master, port)


def _allreduce(
    connection: Connection, python: str, result: HostResult, rank: int, world: int, master: str, port: int
) -> None:
    host = result.plan.host
    environment = [f"{key}={value}" for key, value in sorted(host.nccl.items())]
    argv = [
        "env",
        *environment,
        python,
        "-m",
        "aifactory.runtime.health.allreduce",
        f"--rank={rank}",
        f"--world={world}",
        f"--master={master}",
        f"--port={port}",
        f"--bytes={ALLREDUCE_BYTES}",
        f"--iterations={ALLREDUCE_ITERATIONS}",
        f"--timeout={ALLREDUCE_TIMEOUT_S:g}",
    ]
    answer = run_on_host(
        connection, host.management_address, argv, input_text=None, timeout=ALLREDUCE_TIMEOUT_S + 60
    )
    try:
        measurement = Measurement(**json.loads(answer.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError, TypeError):
        measurement = Measurement.failed(
            "allreduce-busbw", "pool", "GB/s", _why(answer), answer.stdout + answer.stderr
        )
    result.measurements.append(measurement)


def links_down(results: list[HostResult]) -> list[dict[str, str]]:
    """Every host's own links found down (or unreadable), by fabric: what explains a peer that
    cannot be reached on that fabric (policies/health.rego). A host that did not answer at all
    counts as down on every fabric it is on: its peers failing to reach it is its fault."""
    down = {
        (r.name, m.subject) for r in results for m in r.measurements if m.check == "link-up" and not m.value
    }
    down |= {(r.name, i.fabric) for r in results if not r.reachable for i in r.plan.host.interfaces}
    return [{"host": host, "fabric": fabric} for host, fabric in sorted(down)]


def policy_input(
    result: HostResult, pool_members: list[HostResult], down: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    bandwidth = []
    for member in pool_members:
        threshold = member.plan.thresholds.get("tcp-bandwidth")
        if threshold is None or "tcp-bandwidth" not in member.plan.expected:
            continue
        values = [m.value for m in member.measurements if m.check == "tcp-bandwidth"]
        bandwidth.append(
            {"host": member.name, "value": values[0] if values else None, "threshold": threshold.as_policy()}
        )
    return {
        "host": result.name,
        "reachable": result.reachable,
        "measurements": [m.as_dict() for m in result.measurements],
        "thresholds": result.plan.policy_thresholds(),
        "expected": list(result.plan.expected),
        "pool": {"bandwidth": bandwidth},
        "fabric": {"links_down": down or []},
    }


def health_policy() -> PolicyBackend:
    """The health policy (policies/health.rego) loaded into the policy engine."""
    return make_backend(load_policy_set(), hard_limit=False)


@dataclass(frozen=True)
class Verdict:
    verdict: str  # admit | drain | keep-out
    reasons: list[str]
    failures: list[dict[str, Any]]


def decide(backend: PolicyBackend, host: str, facts: dict[str, Any]) -> Verdict:
    """The health policy's verdict on one host's `policy_input`."""
    (decision,) = backend.evaluate([DECISION_PATH], facts)
    if not isinstance(decision, dict) or decision.get("verdict") not in ("admit", "drain", "keep-out"):
        raise HealthError(
            f"the health policy gave no verdict for {host}",
            hint="run aifactory policy test; the policies folder may be incomplete",
        )
    failures = sorted(decision["failures"], key=lambda f: (f["check"], f["subject"]))
    return Verdict(str(decision["verdict"]), [str(r) for r in decision["reasons"]], failures)


def _judge(results: list[HostResult]) -> None:
    backend = health_policy()
    down = links_down(results)
    for result in results:
        members = [r for r in results if r.plan.host.pool == result.plan.host.pool]
        verdict = decide(backend, result.name, policy_input(result, members, down))
        result.verdict, result.reasons, result.failures = verdict.verdict, verdict.reasons, verdict.failures
