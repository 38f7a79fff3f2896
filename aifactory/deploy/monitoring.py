"""`aifactory up`'s monitoring stage: playbooks/monitoring.yml over the site's inventory.

The same setup as deploy (the imported bundle, its signed plan checked against the given one, the
inventory, the Connection's ansible.cfg), after issuing the monitoring certificates from the site CA
(aifactory.telemetry.certs). It is not a deploy: no converged-host bookkeeping, no installed.json;
the role itself is idempotent (a second run changes nothing).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.connection import Connection
from aifactory.deploy.progress import UNFINISHED, Progress
from aifactory.deploy.runner import DeployOptions, _log_event, _require_runner, _run_id, _set_up
from aifactory.errors import DeployError, ExitCode
from aifactory.plan import PlannedSite
from aifactory.secrets import STORE_FILE, SecretResolver
from aifactory.state import SiteState
from aifactory.telemetry.certs import issue_monitoring_certificates
from aifactory.telemetry.power import write_credentials
from aifactory.trust.tokens import TrustFiles

MONITORING_PLAYBOOK = "monitoring.yml"
BMC_CREDENTIALS = "bmc-credentials.json"  # in <state>/monitoring for the run only (the role copies it)


@dataclass(frozen=True)
class MonitoringResult:
    hosts: list[dict[str, Any]]
    status: str
    certificates_issued: tuple[str, ...]

    @property
    def failed_hosts(self) -> list[str]:
        return [h["host"] for h in self.hosts if h["status"] in UNFINISHED]

    @property
    def changed(self) -> int:
        return sum(int(h["changed"]) for h in self.hosts)


def deploy_monitoring(
    planned: PlannedSite, *, connection: Connection, extra_vars: dict[str, Any] | None = None
) -> MonitoringResult:
    """Issue what monitoring certificates are missing, then run the monitoring playbook on every host.
    When the plan has BMCs, their credentials go to the power collector (on the control host) through
    a 0600 file that exists for the run only."""
    _require_runner()
    state = SiteState.for_site(planned.plan.name)
    with state.lock("deploy monitoring"):
        issued = issue_monitoring_certificates(TrustFiles(state.subdir("runtime")), planned.plan)
        credentials = state.subdir("monitoring") / BMC_CREDENTIALS
        passphrase = connection.env.get("AIFACTORY_PASSPHRASE_FILE") or os.environ.get(
            "AIFACTORY_PASSPHRASE_FILE"
        )
        try:
            if write_credentials(
                planned.plan, SecretResolver(state.path(STORE_FILE), passphrase), credentials
            ):
                extra_vars = {**(extra_vars or {}), "aifactory_bmc_credentials_file": str(credentials)}
            result, run_dir = _run_playbook(planned, state, connection, issued.issued, extra_vars)
        finally:
            credentials.unlink(missing_ok=True)  # the one copy left is the control host's, 0600
    if result.failed_hosts or result.status != "successful":
        raise DeployError(
            f"monitoring failed on {', '.join(result.failed_hosts) or 'the playbook run'} "
            f"(events in {run_dir / 'events.jsonl'})",
            code="monitoring-failed",
            exit_code=ExitCode.HOSTS_FAILED,
            hint="fix the host, then run `aifactory up` again: it resumes at monitoring",
        )
    return result


def _run_playbook(
    planned: PlannedSite,
    state: SiteState,
    connection: Connection,
    issued: tuple[str, ...],
    extra_vars: dict[str, Any] | None,
) -> tuple[MonitoringResult, Path]:
    setup = _set_up(planned, DeployOptions(), state, connection)
    run_dir = setup.ansible.folder / "monitoring-runs" / _run_id()
    run_dir.mkdir(parents=True, mode=0o700)
    progress = Progress()
    with (run_dir / "events.jsonl").open("w") as log:

        def handle(event: dict[str, Any]) -> bool:
            log.write(json.dumps(_log_event(event), sort_keys=True, default=str) + "\n")
            progress.feed(event)
            return False

        cmdline = [str(setup.ansible.playbooks / MONITORING_PLAYBOOK)]
        if extra_vars:
            cmdline = ["-e", json.dumps(extra_vars, sort_keys=True), *cmdline]
        runner = setup.ansible.run(handle=handle, limit=None, cmdline=cmdline)
        progress.close()
    result = MonitoringResult([row.as_dict() for row in progress.rows()], str(runner.status), issued)
    state.record(
        command="deploy monitoring",
        result="ok" if result.status == "successful" and not result.failed_hosts else "hosts-failed",
        spec_digest=setup.plan.spec_digest,
        bundle_digest=setup.bundle.digest,
        detail={
            "changed": result.changed,
            "failed_hosts": result.failed_hosts,
            "certificates_issued": list(issued),
        },
    )
    return result, run_dir
