"""Time and peak memory of `aifactory audit report` for a 10,000-host site with over 1,000 findings.

    .venv/bin/python benchmarks/audit_bench.py [--hosts 10000 --pools 100 --datasets 300]

Generates a site (benchmarks/sites.py), then lowers every tenant's clearance to `public` so that
owners and grantees of classified data are uncleared: about 3.6 findings per dataset (over 1,000
with the defaults). The site is deployed on paper: a deploy record for every host, written with
deploy's own writer (a few hosts drifted), and an operator log, so every evidence section has
content. Each measurement runs in its own process; peak memory is that process's maximum resident
set (getrusage ru_maxrss):
- report: `produce_report` (plan, policy, evidence, report.json, report.html, OSCAL, signature);
- plan (baseline): `plan_site` and writing the plan as JSON, the least any report must do.
Prints both (wall and CPU seconds: on a shared machine CPU time is the steadier figure), their
ratio, the report's stages, and the targets (report under 10 s and under 500 MB peak).
Exit status 0 whether or not the targets are met: it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_SECONDS = 10.0
TARGET_MIB = 500.0


def child_report(spec: Path, out: Path) -> dict[str, Any]:
    from aifactory.audit import ReportOptions, produce_report
    from aifactory.plan import plan_site

    start = time.perf_counter()
    written = produce_report(
        plan_site(spec, write_lock=False), out, ReportOptions(timestamp="2026-11-22T09:00:00Z")
    )
    return {
        "seconds": time.perf_counter() - start,
        "findings": len(written.report.findings),
        "controls": len(written.report.controls),
        "hosts": written.report.site["hosts"],
        "html_mib": (out / "report.html").stat().st_size / 2**20,
        "stages": written.timings,
    }


def child_plan(spec: Path, out: Path) -> dict[str, Any]:
    from aifactory.plan import plan_site

    start = time.perf_counter()
    planned = plan_site(spec, write_lock=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(planned.plan.to_json())
    return {"seconds": time.perf_counter() - start}


def run_child(kind: str, spec: Path, out: Path, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(spec), str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepare(folder: Path, hosts: int, pools: int, datasets: int) -> tuple[Path, dict[str, str]]:
    from aifactory.deploy.evidence import write_installed
    from aifactory.plan import plan_site
    from aifactory.state import SiteState
    from benchmarks.sites import generate_site

    text = generate_site(hosts, pools, 8, name="auditbench", datasets=datasets)
    spec = folder / "site.yaml"
    spec.write_text(text.replace("clearance: top-secret", "clearance: public"))
    env = {**os.environ, "AIFACTORY_STATE_HOME": str(folder / "state")}
    os.environ["AIFACTORY_STATE_HOME"] = env["AIFACTORY_STATE_HOME"]
    plan = plan_site(spec).plan
    state = SiteState.for_site(plan.name)
    packages = [
        {"name": "slurm-wlm", "version": "22.05.8-4"},
        {"name": "munge", "version": "0.5.15-2"},
        {"name": "chrony", "version": "4.3-2"},
        {"name": "aifactory", "version": "0.1.0"},
    ]
    configs = {"/etc/slurm/slurm.conf": "1" * 64, "/etc/chrony/chrony.conf": "2" * 64}
    bundle = {"version": "1.0", "digest": "sha256:" + "3" * 64}
    reports = {
        h.name: {
            "runtime": {"version": "0.1.0", "packages": packages},
            "config_files": configs,
            "bundle": bundle,
        }
        for h in plan.hosts
    }
    for host in plan.hosts[1::997]:  # a few hosts drifted
        drifted = {**configs, "/etc/chrony/chrony.conf": "4" * 64}
        reports[host.name] = {**reports[host.name], "config_files": drifted}
    write_installed(
        state,
        run_id="bench",
        when="2026-11-22T08:00:00Z",
        plan_digest=plan.digest(),
        reports=reports,
        results=dict.fromkeys(reports, "changed"),
    )
    for command in ("plan", "bundle import", "deploy"):
        state.record(command=command, result="ok")
    return spec, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--datasets", type=int, default=300)
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, spec, out = args.child
        result = (child_report if kind == "report" else child_plan)(Path(spec), Path(out))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result["peak_mib"] = usage.ru_maxrss / 1024
        result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        spec, env = prepare(folder, args.hosts, args.pools, args.datasets)
        plan = run_child("plan", spec, folder / "plan", env)
        report = run_child("report", spec, folder / "report", env)
    ratio = report["seconds"] / plan["seconds"]
    print(
        f"site: {int(report['hosts']):,} hosts, {int(report['findings']):,} findings, "
        f"{int(report['controls'])} controls; report.html {report['html_mib']:.1f} MiB"
    )
    print(
        f"audit report:        {report['seconds']:7.2f} s  (cpu {report['cpu_seconds']:6.2f} s)  "
        f"peak {report['peak_mib']:7.1f} MiB   "
        f"(targets < {TARGET_SECONDS:.0f} s: {'met' if report['seconds'] < TARGET_SECONDS else 'MISSED'}, "
        f"< {TARGET_MIB:.0f} MiB: {'met' if report['peak_mib'] < TARGET_MIB else 'MISSED'})"
    )
    print(
        f"plan + write (base): {plan['seconds']:7.2f} s  (cpu {plan['cpu_seconds']:6.2f} s)  "
        f"peak {plan['peak_mib']:7.1f} MiB"
    )
    print("report stages (s):   " + ", ".join(f"{k} {v:.2f}" for k, v in report["stages"].items()))
    print(f"ratio report / plan: {ratio:7.2f} x time, {report['peak_mib'] / plan['peak_mib']:.2f} x memory")


if __name__ == "__main__":
    main()
