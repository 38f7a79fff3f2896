"""`aifactory health SITE`: check every host, judge by policy, sign the evidence, drain or resume in
Slurm (docs/health.md)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from aifactory.cli.output import emit_json, table
from aifactory.errors import AifactoryError, ExitCode

if TYPE_CHECKING:
    from aifactory.health.gate import GateResult

EXAMPLES = {
    "health": "aifactory health lab/site.yaml --level standard --hosts lab-cpu-001,lab-cpu-002\n"
    "  aifactory health lab/site.yaml --every 60   # the control host's continuous checks"
}
EXIT_CODES = {"health": (0, 1, 2, 3, 4, 5, 70, 130)}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    health = subparsers.add_parser(
        "health",
        parents=[common],
        help="check every host's health, judge it by policy, drain failing hosts in Slurm",
        description="Run the health checks on the site's hosts in parallel (over SSH from the control "
        "host), judge each against the threshold table with the health policy (admit, drain, keep-out), "
        "write signed evidence to the state folder, drain failing hosts in Slurm and resume the hosts "
        "aifactory drained that now pass, never draining more hosts than the site's drain budget. Exit 4 "
        "when a host fails, 5 when more hosts fail than the budget lets it drain: a site-wide incident "
        "naming the common cause (docs/health.md).",
    )
    health.add_argument("site", help="site spec (YAML)")
    health.add_argument(
        "--hosts", help="comma-separated host names (default: every host of the plan)", default=None
    )
    health.add_argument(
        "--level", choices=("quick", "standard", "burn-in"), default="quick", help="how deep (default quick)"
    )
    health.add_argument(
        "--runtime-prefix",
        type=Path,
        default=Path("/opt/aifactory/current"),
        help="the runtime's install folder on the hosts (default /opt/aifactory/current)",
    )
    health.add_argument(
        "--no-slurm", action="store_true", help="judge and record only; change nothing in Slurm"
    )
    health.add_argument(
        "--every",
        type=_seconds,
        metavar="SECONDS",
        help="run again every SECONDS until stopped (the control host's continuous checks, e.g. under "
        "a systemd service; one line per run; a run that fails to run is reported and the next one "
        "goes ahead): exit 0 when stopped",
    )
    health.set_defaults(handler=cmd_health)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 1 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text} s: use 1 to 86400 seconds")
    return value


def cmd_health(args: argparse.Namespace) -> int:
    from aifactory.health.gate import health_gate
    from aifactory.pipeline.connection import site_connection
    from aifactory.plan import plan_site
    from aifactory.state import SiteState

    planned = plan_site(args.site, write_lock=False)
    hosts = [name.strip() for name in args.hosts.split(",") if name.strip()] if args.hosts else None

    def one_run() -> GateResult:
        return health_gate(
            planned,
            connection=site_connection(planned.plan.name),
            state=SiteState.for_site(planned.plan.name),
            level=args.level,
            host_names=hosts,
            runtime_prefix=args.runtime_prefix,
            slurm=not args.no_slurm,
        )

    if args.every is not None:
        return _continuously(one_run, args.every, args.format == "json")
    gate = one_run()
    run, evidence = gate.run, gate.evidence
    if args.format == "json":
        emit_json({**run.as_dict(), "evidence": evidence.as_dict()})
    else:
        _print(run.as_dict(), evidence.as_dict())
    if run.incident is not None:
        return int(ExitCode.INCIDENT)
    return int(ExitCode.HOSTS_FAILED) if run.failed else 0


def _print(run: dict[str, Any], evidence: dict[str, str]) -> None:
    rows = []
    for host in run["hosts"]:
        for row in host["rows"]:
            value = "n/a" if row["value"] is None else f"{row['value']:g}"
            result = row["result"].upper() if row["result"] == "fail" else row["result"]
            rows.append(
                [
                    host["host"],
                    row["check"],
                    row["subject"],
                    f"{value} {row['unit']}",
                    row["threshold"] or "-",
                    result,
                ]
            )
    print(table(["HOST", "CHECK", "SUBJECT", "VALUE", "THRESHOLD", "RESULT"], rows))
    print()
    for host in run["hosts"]:
        why = f" ({', '.join(host['reasons'])})" if host["reasons"] else ""
        error = f": {host['error']}" if host["error"] else ""
        print(f"{host['host']}: {host['verdict']}{why}{error}")
    for action in run["slurm"]:
        if action["action"] != "none":
            print(
                f"slurm: {action['action']} {action['host']}"
                + (f" ({action['reason']})" if "reason" in action else "")
            )
        elif action.get("over_budget"):
            print(f"slurm: not drained {action['host']} (over the drain budget)")
    if run["incident"] is not None:
        print(f"INCIDENT: {run['incident']['message']}")
    print(f"evidence: {evidence['report']} (signed: {evidence['signature']})")


def _continuously(one_run: Callable[[], GateResult], every: float, as_json: bool) -> int:
    """One run every `every` seconds (from each run's start; a run longer than that is followed at
    once) until SIGTERM or SIGINT, which let the run in progress finish its Slurm changes and
    evidence. A run that cannot be made is reported and the next one goes ahead."""
    stop = threading.Event()

    def stop_after_this_run(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, stop_after_this_run) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.is_set():
            started = time.monotonic()
            print(_round_line(one_run, as_json), flush=True)
            stop.wait(max(0.0, every - (time.monotonic() - started)))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _round_line(one_run: Callable[[], GateResult], as_json: bool) -> str:
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        gate = one_run()
    except AifactoryError as exc:  # e.g. Slurm did not answer, or the site lock is held
        if as_json:
            return json.dumps({"at": at, "error": str(exc)}, sort_keys=True)
        print(f"{at} run not made: {exc}", file=sys.stderr, flush=True)
        return f"{at} run not made (see the error above)"
    run = gate.run.as_dict()
    if as_json:
        return json.dumps({"at": at, **run, "evidence": gate.evidence.as_dict()}, sort_keys=True)
    summary = run["summary"]
    parts = [
        f"{at} {run['level']}: {summary['hosts']} hosts, {summary['admitted']} admitted, "
        f"{summary['drained']} drain, {summary['kept_out']} keep-out"
    ]
    for host in run["hosts"]:
        if host["verdict"] != "admit":
            parts.append(f"{host['host']} {host['verdict']} ({', '.join(host['reasons']) or host['error']})")
    parts += [f"slurm {a['action']} {a['host']}" for a in run["slurm"] if a["action"] != "none"]
    if run["incident"] is not None:
        parts.append(f"INCIDENT {run['incident']['message']}")
    return "; ".join(parts)
