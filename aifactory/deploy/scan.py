"""`aifactory audit scan SITE`: every host of the imported bundle's plan evaluated with OpenSCAP.

playbooks/scan.yml runs `oscap xccdf eval` on each host (offline: the content and scanner come from
the bundle's apt repository) and fetches the ARF files to the site's state folder, `scap/<run>/`;
each is digested (aifactory.audit.scap) into `scap/<run>/scan.json`, which `aifactory audit report`
reads as evidence. The hosts are reached exactly as deploy reaches them (inventory from the bundle's
signed plan, through the site's `Connection`, which the caller chooses).

The content's values a site decides (its security contact, root's mail alias: the spec's
`contacts.security`) reach the scan as an XCCDF tailoring file (`oscap --tailoring-file`), written to
the run's folder from the plan: each host's profile extended with those values, nothing else changed.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifactory.audit import scap
from aifactory.audit.evidence.hostscan import DIGEST, SCANS_DIR
from aifactory.connection import Connection
from aifactory.deploy.imported_bundle import prepare_bundle
from aifactory.deploy.runner import _Ansible, _clean_env, _require_runner, _run_id
from aifactory.deploy.settings import DeploySettings, mitogen_strategy_dir, render_ansible_cfg
from aifactory.errors import DeployError, ExitCode
from aifactory.inventory.site import site_inventory
from aifactory.plan.model import SitePlan
from aifactory.resources import resource_dir
from aifactory.state import SiteState

PLAYBOOK = "scan.yml"
TAILORING = "tailoring.xml"


@dataclass(frozen=True)
class ScanRun:
    site: str
    run_id: str
    folder: Path
    scans: tuple[scap.HostScan, ...]
    unscanned: dict[str, str]  # host -> why no result came back
    skipped_rules: tuple[str, ...] = ()  # left out by the site's Connection (`oscap --skip-rule`)
    tailored_values: dict[str, str] = field(default_factory=dict)  # the site's values (short ids)

    def as_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "run_id": self.run_id,
            "hosts": [s.as_json() for s in self.scans],
            "unscanned": dict(sorted(self.unscanned.items())),
            "skipped_rules": list(self.skipped_rules),
        } | ({"tailored_values": dict(sorted(self.tailored_values.items()))} if self.tailored_values else {})


def scan_site(site: str, *, connection: Connection, trust: Path | None = None) -> ScanRun:
    """Scan every host of `site` and write the digest next to the ARF files; raise if a host failed."""
    _require_runner()
    state = SiteState.for_site(site)
    with state.lock("scan"):
        bundle = prepare_bundle(state, trust=trust)
        plan = bundle.plan()
        run_id = _run_id()
        folder = state.subdir(SCANS_DIR) / run_id
        folder.mkdir(parents=True)
        ansible = _ansible(connection, state, bundle.inventory_vars(plan, None), plan)
        values = scap.site_values(security_contact=plan.contacts.security if plan.contacts else None)
        tailoring = None
        if values:
            tailoring = folder / TAILORING
            profiles = {h.platform.scap_profile for h in plan.hosts}
            tailoring.write_bytes(scap.tailoring_xml(profiles, values, time=dt.datetime.now(dt.UTC)))
        failures = _run_playbook(ansible, folder, skip_rules=connection.scan_skip_rules, tailoring=tailoring)
        hosts = sorted(h.name for h in plan.hosts)
        scans = []
        unscanned = dict(failures)
        for host in hosts:
            arf = folder / f"{host}.arf.xml"
            if arf.is_file():
                scans.append(scap.digest_arf(arf, host=host))
            else:
                unscanned.setdefault(host, "no result came back")
        result = ScanRun(site, run_id, folder, tuple(scans), unscanned, connection.scan_skip_rules, values)
        (folder / DIGEST).write_text(json.dumps(result.as_json(), indent=1, sort_keys=True) + "\n")
    if unscanned:
        raise DeployError(
            f"{len(unscanned)} of {len(hosts)} hosts were not scanned: "
            + "; ".join(f"{h}: {why}" for h, why in sorted(unscanned.items())),
            code="scan-incomplete",
            exit_code=ExitCode.CANNOT_EVALUATE,
            hint="run `aifactory audit scan SITE` again once the hosts are reachable",
        )
    return result


def _ansible(
    connection: Connection, state: SiteState, bundle_vars: dict[str, Any], plan: SitePlan
) -> _Ansible:
    folder = state.subdir("deploy")
    rendered = site_inventory(plan, connection=connection, bundle=bundle_vars, state=state)
    inventory_dir = folder / "scan-inventory"
    rendered.write(inventory_dir)
    cfg = folder / "scan-ansible.cfg"
    cfg.write_text(
        render_ansible_cfg(
            DeploySettings(), folder=folder, base=connection.ansible_cfg, mitogen=mitogen_strategy_dir()
        )
    )
    env = {**_clean_env(), **connection.env, "ANSIBLE_CONFIG": str(cfg), "ANSIBLE_NOCOLOR": "1"}
    return _Ansible(
        folder=folder,
        inventory=inventory_dir,
        prefix=connection.control_prefix,
        playbooks=resource_dir("playbooks"),
        env=env,
    )


def _run_playbook(
    ansible: _Ansible, dest: Path, *, skip_rules: tuple[str, ...], tailoring: Path | None
) -> dict[str, str]:
    """Run scan.yml; the hosts whose scan failed, with the failing task's message."""
    failures: dict[str, str] = {}

    def handle(event: dict[str, Any]) -> bool:
        data = event.get("event_data") or {}
        if event.get("event") in ("runner_on_failed", "runner_on_unreachable"):
            res = data.get("res") or {}
            # A command's msg is only "non-zero return code": its stderr says why (oscap's error).
            said = [str(res.get(key) or "").strip() for key in ("msg", "stderr")]
            message = ": ".join(part for part in said if part)[-300:] or "failed"
            failures[str(data.get("host"))] = f"{data.get('task', 'scan')}: {message}"
        return False

    extra = dest / "scan-vars.json"
    extra.write_text(
        json.dumps(
            {
                "aifactory_scan_dest": str(dest),
                "aifactory_scan_skip_rules": list(skip_rules),
                "aifactory_scan_tailoring": str(tailoring) if tailoring else None,
            }
        )
    )
    ansible.run(handle=handle, limit=None, cmdline=["-e", f"@{extra}", str(ansible.playbooks / PLAYBOOK)])
    return failures
