"""Continuous monitoring (CA-7) from the health gate's signed runs (<state>/health/runs/*.json,
docs/health.md): which hosts were checked and when, their latest verdicts, the drains with their
durations (from the run that drained a host to the run that resumed it; still open when none has),
and the drain budget's incidents.

The rule: every run must verify against the site's health key, and no compute host may be taking
work while failing. A compute host is taking work while failing when its latest run judged it
`drain` or `keep-out` and that run did not leave it drained in Slurm: no drain, no earlier drain that
stands (aifactory's or an operator's), e.g. left in service over the drain budget, or a `--no-slurm`
run. With no run on record CA-7 is not assessed (nothing to check yet, never a pass).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aifactory import signing
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, RuleResult
from aifactory.health.evidence import ALLOWED_SIGNERS, NAMESPACE
from aifactory.health.tasks import COMPUTE_ROLES
from aifactory.state import SiteState

SOURCE = "health"
MONITORING = "CA-7"  # continuous monitoring
VERIFIED = "health.runs-verify"
NOT_WORKING_SICK = "health.failing-hosts-drained"
# What a run's Slurm record says of a failing host that stays out of service.
HELD_OUT = ("drain",)
HELD_OUT_WHY = ("already drained", "drained by someone else")


@dataclass(frozen=True)
class _Run:
    path: Path
    data: dict[str, Any]

    @property
    def time(self) -> str:
        return str(self.data.get("finished") or self.data.get("started") or "")

    def actions(self) -> dict[str, dict[str, Any]]:
        return {str(a.get("host")): a for a in self.data.get("slurm") or [] if isinstance(a, dict)}


def health_evidence(state: SiteState) -> Evidence:
    folder = state.root / "health"
    paths = sorted((folder / "runs").glob("*.json")) if (folder / "runs").is_dir() else []
    if not paths:
        note = "no health run on record (aifactory health SITE, or aifactory up)"
        nothing = RuleResult(VERIFIED, "the health runs verify", NOT_ASSESSED, SOURCE, note)
        return Evidence(
            SOURCE, "Continuous monitoring of host health", NOT_ASSESSED, note, {}, ((MONITORING, nothing),)
        )
    runs, problems = _read_runs(paths, folder / ALLOWED_SIGNERS)
    findings = [_finding(VERIFIED, str(path), why) for path, why in problems]
    latest = _latest_per_host(runs)
    working_sick = [entry for entry in latest.values() if entry["in_service_while_failing"]]
    findings += [
        _finding(
            NOT_WORKING_SICK,
            f"host/{entry['host']}",
            f"{entry['host']} failed its health checks ({', '.join(entry['reasons']) or 'no reason given'}) "
            f"in the run of {entry['checked']} and was not drained: it kept taking work",
        )
        for entry in working_sick
    ]
    verified = FAIL if problems else PASS
    drained_ok = FAIL if working_sick else PASS
    rules = (
        (MONITORING, RuleResult(VERIFIED, "the health runs verify", verified, SOURCE)),
        (MONITORING, RuleResult(NOT_WORKING_SICK, "no failing compute host takes work", drained_ok, SOURCE)),
    )
    detail: dict[str, Any] = {
        "runs": len(runs),
        "first": runs[0].time if runs else None,
        "last": runs[-1].time if runs else None,
        "hosts": [latest[name] for name in sorted(latest)],
        "drains": _drains(runs),
        "incidents": [{"time": r.time, **r.data["incident"]} for r in runs if r.data.get("incident")],
    }
    status = FAIL if findings else PASS
    summary = (
        f"{len(runs)} health run(s) from {detail['first']} to {detail['last']}, {len(latest)} host(s) "
        f"checked, {len(detail['drains'])} drain(s), {len(detail['incidents'])} incident(s)"
    )
    if working_sick:
        summary += f"; taking work while failing: {', '.join(e['host'] for e in working_sick)}"
    return Evidence(
        SOURCE, "Continuous monitoring of host health", status, summary, detail, rules, tuple(findings)
    )


def _read_runs(paths: Iterable[Path], trust: Path) -> tuple[list[_Run], list[tuple[Path, str]]]:
    """Every run that verifies, oldest first, and why each other one does not."""
    runs, problems = [], []
    for path in paths:
        try:
            data = path.read_bytes()
            signature = path.with_name(path.name + ".sig").read_text()
            signing.verify(data, signature, allowed_signers=trust, namespace=NAMESPACE)
            parsed = json.loads(data)
        except OSError as exc:
            problems.append((path, f"cannot read the run or its signature: {exc.strerror}"))
            continue
        except signing.SignatureError as exc:
            problems.append((path, f"the run does not verify: {exc.message}"))
            continue
        except ValueError:
            problems.append((path, "the run is not JSON"))
            continue
        if isinstance(parsed, dict):
            runs.append(_Run(path, parsed))
    runs.sort(key=lambda run: run.time)
    return runs, problems


def _latest_per_host(runs: list[_Run]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for run in runs:
        actions = run.actions()
        for host in run.data.get("hosts") or []:
            name = str(host.get("host"))
            failing = host.get("verdict") != "admit"
            action = actions.get(name, {})
            held_out = action.get("action") in HELD_OUT or action.get("why") in HELD_OUT_WHY
            latest[name] = {
                "host": name,
                "pool": host.get("pool"),
                "checked": run.time,
                "level": run.data.get("level"),
                "verdict": host.get("verdict"),
                "reasons": list(host.get("reasons") or []),
                "slurm": action.get("action", "none") if action else "not applied",
                "in_service_while_failing": failing and host.get("role") in COMPUTE_ROLES and not held_out,
            }
    return latest


def _drains(runs: list[_Run]) -> list[dict[str, Any]]:
    """Each drain aifactory made, from its run to the run that resumed the host (open when none has)."""
    open_drains: dict[str, dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    for run in runs:
        for name, action in sorted(run.actions().items()):
            if action.get("action") == "drain" and name not in open_drains:
                open_drains[name] = {"host": name, "reason": action.get("reason"), "drained": run.time}
            elif action.get("action") == "resume" and name in open_drains:
                drain = open_drains.pop(name)
                done.append({**drain, "resumed": run.time, "seconds": _seconds(drain["drained"], run.time)})
    done += [{**drain, "resumed": None, "seconds": None} for drain in open_drains.values()]
    return sorted(done, key=lambda d: (d["drained"], d["host"]))


def _seconds(start: str, end: str) -> float | None:
    try:
        return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 3)
    except ValueError:
        return None


def _finding(rule: str, resource: str, message: str) -> Finding:
    verified = rule == VERIFIED
    return Finding(
        rule=rule,
        title="a health run does not verify" if verified else "a failing host took work",
        controls=(MONITORING,),
        severity="high",
        resource=resource,
        message=message,
        remediation="keep the health runs as aifactory health wrote them (state folder, health/runs)"
        if verified
        else "drain the host (scontrol update nodename=HOST state=drain reason=...) or raise the drain "
        "budget; run aifactory health SITE again once it is fixed",
        status=FAIL,
        source=SOURCE,
    )
