"""Evidence from deploy: what was installed where, with versions and config digests.

Reads `<state>/deploy/installed.json`, written by deploy, defensively. Accepted shapes:

    {"hosts": {"HOST": {"packages": {"NAME": "VERSION"} | [{"name", "version"}],
                        "configs": {"PATH": "sha256:..."} | [{"path", "digest"|"sha256"}]}}}
    {"hosts": [{"host"|"name": "HOST", "packages": ..., "configs": ...}]}

Hosts with identical packages and configs are grouped into baselines, so 10,000 hosts that agree
make one entry. CM-8: every planned host has a record and no record names an unplanned host.
CM-2: the hosts of each pool share one baseline.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, RuleResult, worst
from aifactory.chain import canonical_json
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState

SOURCE = "deploy"
INVENTORY, BASELINE = "CM-8", "CM-2"
INVENTORY_RULE = ("deploy.inventory_complete", "Every planned host has a deploy record, and only those")
BASELINE_RULE = ("deploy.pool_baseline", "The hosts of a pool run the same packages and configuration")


@dataclass(frozen=True)
class HostRecord:
    packages: dict[str, str]
    configs: dict[str, str]

    def fingerprint(self) -> str:
        body = canonical_json({"packages": self.packages, "configs": self.configs})
        return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


class UnreadableRecord(ValueError):
    pass


def _pairs(value: Any, key: str, value_keys: Sequence[str]) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        out = {}
        for item in value:
            if not isinstance(item, Mapping) or key not in item:
                raise UnreadableRecord(f"an entry without '{key}': {item!r:.80}")
            found = next((item[k] for k in value_keys if k in item), "")
            out[str(item[key])] = str(found)
        return dict(sorted(out.items()))
    if value is None:
        return {}
    raise UnreadableRecord(f"expected a mapping or a list, found {type(value).__name__}")


def read_installed(path: Path) -> dict[str, HostRecord]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UnreadableRecord(str(exc)) from exc
    hosts = data.get("hosts") if isinstance(data, Mapping) else None
    if isinstance(hosts, list):
        hosts = {str(h.get("host") or h.get("name")): h for h in hosts if isinstance(h, Mapping)}
    if not isinstance(hosts, Mapping):
        raise UnreadableRecord("no 'hosts' mapping or list")
    out = {}
    for name, record in hosts.items():
        if not isinstance(record, Mapping):
            raise UnreadableRecord(f"host {name}: expected a mapping")
        out[str(name)] = HostRecord(_pairs(record.get("packages"), "name", ("version",)),
                                    _pairs(record.get("configs"), "path", ("digest", "sha256")))
    return out


def deploy_evidence(state: SiteState, plan: SitePlan) -> Evidence:
    path = state.path("deploy", "installed.json")
    if not path.exists():
        note = f"no deploy record at {path}: the site has not been deployed"
        return Evidence(SOURCE, "Deploy", NOT_ASSESSED, note, {"record": str(path)},
                        ((INVENTORY, RuleResult(*INVENTORY_RULE, NOT_ASSESSED, SOURCE, note)),
                         (BASELINE, RuleResult(*BASELINE_RULE, NOT_ASSESSED, SOURCE, note))))
    try:
        records = read_installed(path)
    except UnreadableRecord as exc:
        finding = Finding(INVENTORY_RULE[0], INVENTORY_RULE[1], (INVENTORY,), "high", f"file/{path}",
                          f"the deploy record cannot be read: {exc}",
                          "run `aifactory deploy` again to rewrite it, and find out what damaged it",
                          FAIL, SOURCE)
        return Evidence(SOURCE, "Deploy", FAIL, finding.message, {"record": str(path)},
                        ((INVENTORY, RuleResult(*INVENTORY_RULE, FAIL, SOURCE)),
                         (BASELINE, RuleResult(*BASELINE_RULE, NOT_ASSESSED, SOURCE, "record unreadable"))),
                        (finding,))
    return _assess(path, plan, records)


def _assess(path: Path, plan: SitePlan, records: dict[str, HostRecord]) -> Evidence:
    pools: dict[str, list[str]] = {}
    for host in plan.hosts:
        pools.setdefault(host.pool, []).append(host.name)
    missing = {pool: [h for h in names if h not in records] for pool, names in pools.items()}
    missing = {pool: hosts for pool, hosts in missing.items() if hosts}
    planned = {h.name for h in plan.hosts}
    unplanned = sorted(set(records) - planned)
    findings = [_missing_finding(pool, hosts) for pool, hosts in missing.items()]
    if unplanned:
        findings.append(Finding(*INVENTORY_RULE, (INVENTORY,), "medium", "site/" + plan.name,
                                f"{len(unplanned)} host(s) have deploy records but are not in the plan: "
                                + _names(unplanned),
                                "remove them from service, or add them to the site spec", FAIL, SOURCE))
    fingerprints = {name: record.fingerprint() for name, record in records.items()}
    baselines = _baselines(pools, records, fingerprints)
    drift = [_drift_finding(pool, groups) for pool, groups in _pool_groups(pools, fingerprints).items()
             if len(groups) > 1]
    inventory = FAIL if missing or unplanned else PASS
    baseline = FAIL if drift else PASS
    summary = (f"{len(records)} of {len(planned)} planned hosts have deploy records; "
               f"{len(baselines)} distinct baseline(s)")
    detail = {"record": str(path), "hosts_planned": len(planned), "hosts_reported": len(records),
              "missing": missing, "unplanned": unplanned, "baselines": baselines}
    return Evidence(SOURCE, "Deploy", worst([inventory, baseline]), summary, detail,
                    ((INVENTORY, RuleResult(*INVENTORY_RULE, inventory, SOURCE)),
                     (BASELINE, RuleResult(*BASELINE_RULE, baseline, SOURCE))), tuple(findings + drift))


def _names(hosts: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(hosts[:limit])
    return shown + (f" and {len(hosts) - limit} more" if len(hosts) > limit else "")


def _missing_finding(pool: str, hosts: list[str]) -> Finding:
    return Finding(*INVENTORY_RULE, (INVENTORY,), "medium", f"pool/{pool}",
                   f"{len(hosts)} planned host(s) have no deploy record: {_names(hosts)}",
                   "run `aifactory deploy` for these hosts, or take them out of the plan", FAIL, SOURCE)


def _pool_groups(pools: dict[str, list[str]], fingerprints: dict[str, str]
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
    return Finding(*BASELINE_RULE, (BASELINE,), "medium", f"pool/{pool}",
                   f"{len(groups)} different baselines in one pool; {len(outliers)} host(s) differ from the "
                   f"majority: {_names(outliers)}",
                   "re-run `aifactory deploy` on the pool so every host converges on one baseline",
                   FAIL, SOURCE)


def _baselines(pools: dict[str, list[str]], records: dict[str, HostRecord], fingerprints: dict[str, str]
               ) -> list[dict[str, Any]]:
    """Hosts grouped by identical packages and configs, largest group first."""
    pool_of = {name: pool for pool, names in pools.items() for name in names}
    groups: dict[str, list[str]] = {}
    for name in sorted(records):
        groups.setdefault(fingerprints[name], []).append(name)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return [{"fingerprint": fingerprint, "hosts": names,
             "pools": sorted({pool_of.get(n, "(unplanned)") for n in names}),
             "packages": records[names[0]].packages, "configs": records[names[0]].configs}
            for fingerprint, names in ordered]
