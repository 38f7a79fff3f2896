"""Evidence from the hosts themselves: the latest OpenSCAP scan (`aifactory audit scan SITE`, or the
one after deploy), weighed against the reviewed SCAP waivers beside the spec.

Each failing rule on each host is a finding about `host/<name>` under the SP 800-53 controls the
content's references name (waived when a current waiver explains it); each evaluated rule is a
verdict under those controls. A stale or expired waiver fails the section. The detail holds the
per-host and per-profile counts and the trend against the scan before it (docs/audit.md).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aifactory.audit import scap
from aifactory.audit.model import (
    FAIL,
    NOT_ASSESSED,
    PASS,
    WAIVED,
    Evidence,
    Finding,
    RuleResult,
    Waiver,
    worst,
)
from aifactory.state import SiteState

SOURCE = "host-scan"
SCANS_DIR = "scap"
DIGEST = "scan.json"
TITLE = "Host scans (OpenSCAP)"


def scan_runs(state: SiteState) -> list[Path]:
    """The digests of the site's scan runs, oldest first (run ids sort by time)."""
    root = state.root / SCANS_DIR
    return sorted(root.glob(f"*/{DIGEST}")) if root.is_dir() else []


def read_run(path: Path) -> list[scap.HostScan]:
    data = json.loads(path.read_text())
    return [scap.HostScan.from_json(h) for h in data["hosts"]]


def host_scan_evidence(state: SiteState, *, waivers: Path | None, today: dt.date) -> Evidence:
    runs = scan_runs(state)
    if not runs:
        return Evidence(
            SOURCE, TITLE, NOT_ASSESSED, "no host scan yet: run `aifactory audit scan SITE` (deploy runs one)"
        )
    scans = read_run(runs[-1])
    loaded = scap.load_waivers(waivers) if waivers and waivers.is_file() else []
    assessed = scap.assess(scans, loaded, today=today)
    by_rule = {w.rule: w for w in loaded if w.expires >= today}
    findings = tuple(_findings(scans, by_rule))
    rules = _verdicts(scans, by_rule)
    previous = _counts(read_run(runs[-2])) if len(runs) > 1 else None
    current = _counts(scans)
    unwaived = sum(len(h.unwaived) for h in assessed.hosts)
    status = FAIL if (unwaived or assessed.stale or assessed.expired) else PASS
    applicable = sum(h.applicable for h in assessed.hosts)
    passed = sum(h.passed for h in assessed.hosts)
    summary = (
        f"{len(scans)} hosts scanned ({runs[-1].parent.name}): {passed} of {applicable} applicable rule "
        f"results pass ({_percent(passed, applicable)}); {unwaived} failing without a waiver, "
        f"{len(assessed.stale)} stale and {len(assessed.expired)} expired waivers"
    )
    detail = {
        "run": runs[-1].parent.name,
        "hosts": [
            _host_row(h, s) for h, s in zip(assessed.hosts, sorted(scans, key=lambda s: s.host), strict=True)
        ],
        "profiles": _profiles(assessed.hosts),
        "trend": _trend(previous, current, runs[-2].parent.name if previous else None),
        # Rules the site's connection left out of the scan (`oscap --skip-rule`): not evaluated.
        "skipped_rules": _skipped(runs[-1]),
        "waivers_file": str(waivers) if waivers else None,
        "stale_waivers": [w.rule for w in assessed.stale],
        "expired_waivers": [f"{w.rule} (expired {w.expires.isoformat()})" for w in assessed.expired],
    }
    return Evidence(SOURCE, TITLE, status, summary, detail, tuple(rules), findings)


def _skipped(run: Path) -> list[str]:
    skipped = json.loads(run.read_text()).get("skipped_rules") or []
    return [str(rule) for rule in skipped]


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def _host_row(outcome: scap.HostOutcome, scan: scap.HostScan) -> dict[str, Any]:
    return {
        "host": outcome.host,
        "profile": outcome.profile,
        "applicable": outcome.applicable,
        "passed": outcome.passed,
        "pass_rate": _percent(outcome.passed, outcome.applicable),
        "waived": len(outcome.waived),
        "failing_unwaived": len(outcome.unwaived),
        "content": f"ssg {scan.content_version}",
        "arf_sha256": scan.arf_sha256,
    }


def _profiles(hosts: Sequence[scap.HostOutcome]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, int]] = {}
    for h in hosts:
        row = out.setdefault(
            h.profile, {"hosts": 0, "applicable": 0, "passed": 0, "waived": 0, "unwaived": 0}
        )
        row["hosts"] += 1
        row["applicable"] += h.applicable
        row["passed"] += h.passed
        row["waived"] += len(h.waived)
        row["unwaived"] += len(h.unwaived)
    return [
        {"profile": name, **row, "pass_rate": _percent(row["passed"], row["applicable"])}
        for name, row in sorted(out.items())
    ]


def _counts(scans: Sequence[scap.HostScan]) -> dict[str, tuple[int, int]]:
    """host -> (applicable, passed)."""
    return {s.host: (len(s.applicable()), sum(r.passed for r in s.applicable())) for s in scans}


def _trend(
    previous: dict[str, tuple[int, int]] | None, current: dict[str, tuple[int, int]], run: str | None
) -> dict[str, Any]:
    if previous is None:
        return {"previous_run": None, "note": "the first scan: no trend yet"}
    rows = []
    for host in sorted(set(previous) | set(current)):
        before, now = previous.get(host), current.get(host)
        rows.append(
            {
                "host": host,
                "passed_before": f"{before[1]}/{before[0]}" if before else "not scanned",
                "passed_now": f"{now[1]}/{now[0]}" if now else "not scanned",
                "change": (now[1] - before[1]) if before and now else None,
            }
        )
    return {"previous_run": run, "hosts": rows}


def _findings(scans: Sequence[scap.HostScan], waivers: dict[str, scap.Waiver]) -> list[Finding]:
    out = []
    for scan in scans:
        for rule in scan.applicable():
            if rule.passed:
                continue
            waiver = waivers.get(rule.rule)
            out.append(
                Finding(
                    rule=f"scap.{rule.rule}",
                    title=rule.title,
                    controls=rule.controls,
                    severity=rule.severity if rule.severity in ("high", "medium", "low") else "info",
                    resource=f"host/{scan.host}",
                    message=f"{rule.result} under profile {scan.profile} (ssg {scan.content_version})",
                    remediation="the base role fixes it, or a reviewed waiver explains why it cannot",
                    status=WAIVED if waiver else FAIL,
                    source=SOURCE,
                    waiver=Waiver(waiver.reason, waiver.approved_by, waiver.expires.isoformat())
                    if waiver
                    else None,
                )
            )
    return out


def _verdicts(
    scans: Sequence[scap.HostScan], waivers: dict[str, scap.Waiver]
) -> list[tuple[str, RuleResult]]:
    """One verdict per (control, rule): the worst over the hosts that evaluated the rule."""
    statuses: dict[str, list[str]] = {}
    titles: dict[str, tuple[str, tuple[str, ...]]] = {}
    for scan in scans:
        for rule in scan.applicable():
            status = PASS if rule.passed else (WAIVED if rule.rule in waivers else FAIL)
            statuses.setdefault(rule.rule, []).append(status)
            titles[rule.rule] = (rule.title, rule.controls)
    out = []
    for rule_id in sorted(statuses):
        title, controls = titles[rule_id]
        verdict = RuleResult(f"scap.{rule_id}", title, worst(statuses[rule_id]), SOURCE)
        out += [(control, verdict) for control in controls]
    return out
