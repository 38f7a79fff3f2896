"""The gate's one line per failing host names the checks behind its reason codes: an upgrade's exit 4
(aifactory.lifecycle) and `up`'s health stage print these lines, and `measurement-missing` alone
does not say which check could not measure."""

from __future__ import annotations

from pathlib import Path

from aifactory.health.evidence import Evidence
from aifactory.health.gate import GateResult
from aifactory.health.run import HealthRun, HostResult
from aifactory.health.tasks import HostPlan
from aifactory.plan import plan_site
from aifactory.runtime.health.model import HostTask, Measurement

LAB = Path(__file__).resolve().parents[2] / "inventory" / "lab" / "site.yaml"


def _run(measurements: list[Measurement], expected: tuple[str, ...], reasons: list[str]) -> HealthRun:
    plan = plan_site(LAB, write_lock=False).plan
    host = next(h for h in plan.hosts if h.role == "cpu")
    run = HealthRun(plan.name, "quick", "2026-12-03T01:00:00.000000Z")
    result = HostResult(HostPlan(host, HostTask(host.name, "quick"), {}, expected))
    result.reachable, result.verdict, result.reasons = True, "drain", reasons
    result.measurements = measurements
    run.hosts.append(result)
    return run


def _lines(run: HealthRun, tmp_path: Path) -> list[str]:
    return GateResult(
        run, Evidence(tmp_path / "r.json", tmp_path / "r.sig", tmp_path / "signers", "x")
    ).failures()


def test_a_failed_measurement_is_named_beside_its_reason_code(tmp_path: Path) -> None:
    failed = Measurement.failed("memory-available", "host", "bytes", "no such file: /proc/x")
    ok = Measurement("disk-free", "/", 10.0, "GiB")
    run = _run([failed, ok], ("memory-available", "disk-free"), ["measurement-missing"])
    (line,) = _lines(run, tmp_path)
    assert line.endswith("drain for measurement-missing (checks: memory-available)"), line


def test_an_expected_check_never_measured_is_named(tmp_path: Path) -> None:
    run = _run(
        [Measurement("disk-free", "/", 10.0, "GiB")], ("disk-free", "gpu-count"), ["measurement-missing"]
    )
    (line,) = _lines(run, tmp_path)
    assert "(checks: gpu-count)" in line and "disk-free" not in line, line
