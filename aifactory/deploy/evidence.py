"""Deploy evidence: what each host runs, for auditors (`deploy/installed.json` in the state folder).

    {"schema": "aifactory.deploy.installed/v1", "site": ..., "updated": ...,
     "hosts": {"<host>": {"deployed_at", "run_id", "result", "plan_digest",
                          "bundle": {"version", "digest", "verified_dir"},
                          "runtime": {"version", "directory", "packages": [{"name", "version"}], ...},
                          "config_files": {"<path>": "<sha256>"}}}}

Hosts a run did not reach keep their previous entry (with the new run's result beside it), so the
file always says what was last installed where.

Beside it, `deploy/plan.json`: the plan of the last deploy that reached every host of it (no --limit,
no --check, every host finished): what `aifactory resize` compares the spec's plan with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from aifactory.durable import atomic_write
from aifactory.errors import Location, PlanFormatError, StateError
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState

SCHEMA = "aifactory.deploy.installed/v1"
REPORT_FACT = "aifactory_deploy_report"


def installed_path(state: SiteState) -> Path:
    return state.path("deploy", "installed.json")


def read_installed(state: SiteState) -> dict[str, Any]:
    path = installed_path(state)
    if not path.is_file():
        return {"schema": SCHEMA, "site": state.site, "hosts": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"schema": SCHEMA, "site": state.site, "hosts": {}}
    return (
        data
        if isinstance(data, dict) and isinstance(data.get("hosts"), dict)
        else {"schema": SCHEMA, "site": state.site, "hosts": {}}
    )


def report_from_event(event: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The host's report when this event is the playbook's report task finishing."""
    if event.get("event") != "runner_on_ok":
        return None
    data = event.get("event_data") or {}
    facts = (data.get("res") or {}).get("ansible_facts") or {}
    report = facts.get(REPORT_FACT)
    if not isinstance(report, dict):
        return None
    return str(data.get("host", report.get("host", ""))), report


def _runtime(report: dict[str, Any]) -> dict[str, Any]:
    runtime = dict(report.get("runtime") or {})
    if not runtime.get("packages"):
        return {}
    runtime["packages"] = sorted(
        ({"name": p.get("name"), "version": p.get("version")} for p in runtime["packages"]),
        key=lambda p: str(p["name"]).lower(),
    )
    return runtime


def write_installed(
    state: SiteState,
    *,
    run_id: str,
    when: str,
    plan_digest: str,
    reports: dict[str, dict[str, Any]],
    results: dict[str, str],
) -> Path:
    data = read_installed(state)
    hosts: dict[str, Any] = data["hosts"]
    for host, result in sorted(results.items()):
        entry = dict(hosts.get(host, {}))
        entry["last_run"] = {"run_id": run_id, "at": when, "result": result}
        report = reports.get(host)
        if report is not None and result in ("ok", "changed"):
            entry.update(
                {
                    "deployed_at": when,
                    "run_id": run_id,
                    "result": result,
                    "plan_digest": plan_digest,
                    "bundle": report.get("bundle"),
                    "config_files": dict(sorted((report.get("config_files") or {}).items())),
                    # files that carry the host's own name or addresses (excluded from pool baselines)
                    "host_config_files": sorted(report.get("host_config_files") or []),
                }
            )
            runtime = _runtime(report)
            if runtime:  # a run narrowed by --tags may not have looked at the runtime: keep what was known
                entry["runtime"] = runtime
        hosts[host] = entry
    data.update({"schema": SCHEMA, "site": state.site, "updated": when, "hosts": dict(sorted(hosts.items()))})
    path = installed_path(state)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def deployed_plan_path(state: SiteState) -> Path:
    return state.path("deploy", "plan.json")


def write_deployed_plan(state: SiteState, plan: SitePlan) -> Path:
    """Keep the plan every host of it now runs (the signed plan's bytes)."""
    path = deployed_plan_path(state)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    atomic_write(path, plan.to_json().encode(), mode=0o600)
    return path


def read_deployed_plan(state: SiteState) -> SitePlan | None:
    """The plan of the last deploy that reached every host of it; None before the first one."""
    path = deployed_plan_path(state)
    if not path.is_file():
        return None
    try:
        return SitePlan.load(path)
    except PlanFormatError as exc:
        raise StateError(
            f"the record of the deployed plan cannot be read: {exc.message}",
            code="deployed-plan",
            location=Location(file=str(path)),
            hint="run `aifactory deploy` to write it again",
        ) from None
