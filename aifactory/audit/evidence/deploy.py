"""Evidence from deploy: what was installed where, with versions and config digests.

Reads `<state>/deploy/installed.json` (written by aifactory.deploy.evidence) defensively:

    {"schema": "aifactory.deploy.installed/v1",
     "hosts": {"HOST": {"deployed_at", "plan_digest", "bundle": {"version", "digest"},
                        "runtime": {"packages": [{"name", "version"}]},
                        "config_files": {"PATH": "SHA256"}, "last_run": {"result", ...}}}}

Also accepted: `packages`/`configs` at the host's top level, as mappings or as lists of
{"name", "version"} / {"path", "digest"|"sha256"}, and `hosts` as a list with "host" or "name".
A host entry with nothing installed (only a failed `last_run`) counts as not deployed.

Hosts with identical packages, configs and bundle are grouped into baselines, so 10,000 hosts that
agree make one entry. CM-8: every planned host has a record and no record names an unplanned host;
hosts a resize retired (aifactory.lifecycle.resize, `<state>/resize/retired.json`) keep their records
and are listed as retired, not as unplanned; hosts whose machine `aifactory replace` swapped list
each replacement (new host key, the old keys dropped, the new machine's UUID and serial).
CM-2: the hosts of each pool share one baseline, and every host was deployed from the current plan.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, RuleResult, worst
from aifactory.chain import canonical_json
from aifactory.errors import AifactoryError
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState

SOURCE = "deploy"
INVENTORY, BASELINE = "CM-8", "CM-2"
INVENTORY_RULE = ("deploy.inventory_complete", "Every planned host has a deploy record, and only those")
BASELINE_RULE = ("deploy.pool_baseline", "The hosts of a pool run the same packages and configuration")
CURRENT_PLAN_RULE = ("deploy.current_plan", "Every host was deployed from the site's current plan")


@dataclass(frozen=True)
class HostRecord:
    packages: dict[str, str]
    configs: dict[str, str]
    bundle: str = ""  # "<version> <digest>" of the bundle it was deployed from
    plan_digest: str = ""
    last_result: str = ""
    host_configs: dict[str, str] = field(default_factory=dict)  # host-specific by design: not in the baseline

    @property
    def installed(self) -> bool:
        return bool(self.packages or self.configs or self.bundle)

    def fingerprint(self) -> str:
        body = canonical_json({"packages": self.packages, "configs": self.configs, "bundle": self.bundle})
        return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


class _UnreadableRecord(AifactoryError):
    """The deploy record cannot be read (internal control flow: `deploy_evidence` turns it into a
    failed CM-8 finding, never an error of the audit command)."""


def _pairs(value: Any, key: str, value_keys: Sequence[str]) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        out = {}
        for item in value:
            if not isinstance(item, Mapping) or key not in item:
                raise _UnreadableRecord(f"an entry without '{key}': {item!r:.80}")
            found = next((item[k] for k in value_keys if k in item), "")
            out[str(item[key])] = str(found)
        return dict(sorted(out.items()))
    if value is None:
        return {}
    raise _UnreadableRecord(f"expected a mapping or a list, found {type(value).__name__}")


def read_installed(path: Path) -> dict[str, HostRecord]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _UnreadableRecord(str(exc)) from exc
    hosts = data.get("hosts") if isinstance(data, Mapping) else None
    if isinstance(hosts, list):
        hosts = {str(h.get("host") or h.get("name")): h for h in hosts if isinstance(h, Mapping)}
    if not isinstance(hosts, Mapping):
        raise _UnreadableRecord("no 'hosts' mapping or list")
    return {str(name): _host_record(str(name), record) for name, record in hosts.items()}


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _host_record(name: str, record: Any) -> HostRecord:
    if not isinstance(record, Mapping):
        raise _UnreadableRecord(f"host {name}: expected a mapping")
    runtime = _mapping(record.get("runtime"))
    packages = record.get("packages") if "packages" in record else runtime.get("packages")
    configs = record.get("configs") if "configs" in record else record.get("config_files")
    bundle = _mapping(record.get("bundle"))
    own = {str(p) for p in record.get("host_config_files") or [] if isinstance(p, str)}
    try:
        all_configs = _pairs(configs, "path", ("digest", "sha256"))
        return HostRecord(
            _pairs(packages, "name", ("version",)),
            {k: v for k, v in all_configs.items() if k not in own},
            f"{bundle.get('version', '')} {bundle.get('digest', '')}".strip(),
            str(record.get("plan_digest") or ""),
            str(_mapping(record.get("last_run")).get("result") or ""),
            {k: v for k, v in all_configs.items() if k in own},
        )
    except _UnreadableRecord as exc:
        raise _UnreadableRecord(f"host {name}: {exc}") from None


def _not_assessed(path: Path, note: str) -> Evidence:
    rules = tuple(
        (control, RuleResult(*rule, NOT_ASSESSED, SOURCE, note))
        for control, rule in (
            (INVENTORY, INVENTORY_RULE),
            (BASELINE, BASELINE_RULE),
            (BASELINE, CURRENT_PLAN_RULE),
        )
    )
    return Evidence(SOURCE, "Deploy", NOT_ASSESSED, note, {"record": str(path)}, rules)


def deploy_evidence(state: SiteState, plan: SitePlan, plan_digest: str) -> Evidence:
    """CM-8 and CM-2 from the deploy record, for the site whose current plan has `plan_digest`."""
    path = state.path("deploy", "installed.json")
    if not path.exists():
        return _not_assessed(path, f"no deploy record at {path}: the site has not been deployed")
    try:
        records = read_installed(path)
    except _UnreadableRecord as exc:
        finding = Finding(
            *INVENTORY_RULE,
            (INVENTORY,),
            "high",
            f"file/{path}",
            f"the deploy record cannot be read: {exc}",
            "run `aifactory deploy` again to rewrite it, and find out what damaged it",
            FAIL,
            SOURCE,
        )
        unreadable = _not_assessed(path, "the deploy record cannot be read")
        rules = ((INVENTORY, RuleResult(*INVENTORY_RULE, FAIL, SOURCE)),) + unreadable.rules[1:]
        return Evidence(SOURCE, "Deploy", FAIL, finding.message, {"record": str(path)}, rules, (finding,))
    found = _assess(path, plan, plan_digest, records, _retired(state, plan))
    return replace(found, detail={**found.detail, "replaced": _replaced(state, plan)})


def _replaced(state: SiteState, plan: SitePlan) -> dict[str, list[dict[str, Any]]]:
    """Planned hosts whose machine was replaced (aifactory.lifecycle.replace: `<state>/replace/
    replaced.json`), each replacement with its new host key, the keys dropped and the new machine's
    UUID and serial: the inventory follows the machine, not only the name."""
    from aifactory.lifecycle.replace import replaced_hosts

    return replaced_hosts(state, [h.name for h in plan.hosts])


def _retired(state: SiteState, plan: SitePlan) -> dict[str, dict[str, str]]:
    """Hosts a resize took out of the site (and no later resize brought back)."""
    from aifactory.lifecycle.resize import ResizeStore

    planned = {h.name for h in plan.hosts}
    return {h: v for h, v in ResizeStore(state).retired().items() if h not in planned}


def _assess(
    path: Path,
    plan: SitePlan,
    plan_digest: str,
    reported: dict[str, HostRecord],
    retired: dict[str, dict[str, str]] | None = None,
) -> Evidence:
    retired = retired or {}
    pools: dict[str, list[str]] = {}
    for host in plan.hosts:
        pools.setdefault(host.pool, []).append(host.name)
    records = {name: record for name, record in reported.items() if record.installed and name not in retired}
    planned = {h.name for h in plan.hosts}
    unplanned = sorted(set(records) - planned)
    missing = {pool: [h for h in names if h not in records] for pool, names in pools.items()}
    findings = [_missing_finding(pool, hosts, reported) for pool, hosts in missing.items() if hosts]
    if unplanned:
        findings.append(
            Finding(
                *INVENTORY_RULE,
                (INVENTORY,),
                "medium",
                "site/" + plan.name,
                f"{len(unplanned)} host(s) have deploy records but are not in the plan: " + _names(unplanned),
                "remove them from service, or add them to the site spec",
                FAIL,
                SOURCE,
            )
        )
    fingerprints = {name: record.fingerprint() for name, record in records.items()}
    baselines = _baselines(pools, records, fingerprints)
    drift = [
        _drift_finding(pool, groups)
        for pool, groups in _pool_groups(pools, fingerprints).items()
        if len(groups) > 1
    ]
    stale = _stale_finding(records, plan_digest, plan.name)
    verdicts = {
        INVENTORY_RULE: FAIL if findings else PASS,
        BASELINE_RULE: FAIL if drift else PASS,
        CURRENT_PLAN_RULE: FAIL if stale else PASS if records else NOT_ASSESSED,
    }
    summary = (
        f"{len(records)} of {len(planned)} planned hosts have deploy records; "
        f"{len(baselines)} distinct baseline(s)"
    )
    detail = {
        "record": str(path),
        "hosts_planned": len(planned),
        "hosts_reported": len(records),
        "missing": {pool: hosts for pool, hosts in missing.items() if hosts},
        "unplanned": unplanned,
        "current": sorted(set(records) & planned),
        "retired": retired,
        "last_run_not_ok": sorted(
            n for n, r in reported.items() if r.last_result not in ("", "ok", "changed")
        ),
        "baselines": baselines,
    }
    rules = (
        (INVENTORY, RuleResult(*INVENTORY_RULE, verdicts[INVENTORY_RULE], SOURCE)),
        (BASELINE, RuleResult(*BASELINE_RULE, verdicts[BASELINE_RULE], SOURCE)),
        (BASELINE, RuleResult(*CURRENT_PLAN_RULE, verdicts[CURRENT_PLAN_RULE], SOURCE)),
    )
    return Evidence(
        SOURCE,
        "Deploy",
        worst(list(verdicts.values())),
        summary,
        detail,
        rules,
        tuple(findings + drift + ([stale] if stale else [])),
    )


def _stale_finding(records: dict[str, HostRecord], plan_digest: str, site: str) -> Finding | None:
    stale = sorted(n for n, r in records.items() if r.plan_digest and r.plan_digest != plan_digest)
    if not stale:
        return None
    return Finding(
        *CURRENT_PLAN_RULE,
        (BASELINE,),
        "medium",
        f"site/{site}",
        f"{len(stale)} host(s) were deployed from another plan than the current one "
        f"({plan_digest}): {_names(stale)}",
        "deploy the current plan to these hosts (`aifactory deploy`)",
        FAIL,
        SOURCE,
    )


def _names(hosts: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(hosts[:limit])
    return shown + (f" and {len(hosts) - limit} more" if len(hosts) > limit else "")


def _missing_finding(pool: str, hosts: list[str], reported: dict[str, HostRecord]) -> Finding:
    failed = [h for h in hosts if h in reported]
    note = f" ({len(failed)} of them tried and failed: {_names(failed, 5)})" if failed else ""
    return Finding(
        *INVENTORY_RULE,
        (INVENTORY,),
        "medium",
        f"pool/{pool}",
        f"{len(hosts)} planned host(s) have no deploy record: {_names(hosts)}{note}",
        "run `aifactory deploy` for these hosts, or take them out of the plan",
        FAIL,
        SOURCE,
    )


def _pool_groups(
    pools: dict[str, list[str]], fingerprints: dict[str, str]
) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for pool, names in pools.items():
        groups = out.setdefault(pool, {})
        for name in names:
            if name in fingerprints:
                groups.setdefault(fingerprints[name], []).append(name)
    return out


def _drift_finding(pool: str, groups: dict[str, list[str]]) -> Finding:
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    outliers = [name for _, names in ranked[1:] for name in names]
    return Finding(
        *BASELINE_RULE,
        (BASELINE,),
        "medium",
        f"pool/{pool}",
        f"{len(groups)} different baselines in one pool; {len(outliers)} host(s) differ from the "
        f"majority: {_names(outliers)}",
        "re-run `aifactory deploy` on the pool so every host converges on one baseline",
        FAIL,
        SOURCE,
    )


def _baselines(
    pools: dict[str, list[str]], records: dict[str, HostRecord], fingerprints: dict[str, str]
) -> list[dict[str, Any]]:
    """Hosts grouped by identical packages and configs, largest group first."""
    pool_of = {name: pool for pool, names in pools.items() for name in names}
    groups: dict[str, list[str]] = {}
    for name in sorted(records):
        groups.setdefault(fingerprints[name], []).append(name)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return [
        {
            "fingerprint": fingerprint,
            "hosts": names,
            "pools": sorted({pool_of.get(n, "(unplanned)") for n in names}),
            "packages": records[names[0]].packages,
            "configs": records[names[0]].configs,
        }
        for fingerprint, names in ordered
    ]
