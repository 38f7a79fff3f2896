"""The session lab with monitoring deployed, shared by the telemetry lab modules (test_monitoring_lab,
test_economics_lab, test_ops_report_lab): `Monitored` (status, PromQL queries, the services' logs) and
`monitored_lab()`, which the package-scoped `monitored` fixture (tests/telemetry/conftest.py) runs once
for all three: the serving nodes on HTTPS, monitoring deployed with 2 s scrapes and evaluations, and
everything this started stopped again afterwards."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waiting import wait_for

from aifactory.deploy import DeployOptions
from aifactory.state import SiteState
from aifactory.trust.tokens import TrustFiles
from tests.conftest import DeployedLab, LabSession

INTERVAL = 2  # seconds between scrapes and rule evaluations in this module
SUPERVISOR = "/run/aifactory-lab/bin/aifactory-service"
SERVER_SERVICES = (
    "prometheus",
    "prometheus-alertmanager",
    "aifactory-alert-receiver",
    "aifactory-power-collector",
)
HOST_DOWN_FOR = 60  # hosts.rules.yml: HostDown's for:
SERVE_PORT = 8600  # the runtime role's runtime_serve_port
DECISION_LOG = "/var/lib/aifactory/runtime/decisions.jsonl"

# Run on the control host: one PromQL query through Prometheus' HTTP API, with the service certificate.
QUERY = """
import json, sys
from aifactory.plan import plan_site
from aifactory.state import SiteState
from aifactory.telemetry.status import PrometheusClient
plan = plan_site(sys.argv[1], write_lock=False).plan
client = PrometheusClient.for_site(plan, SiteState.for_site(plan.name))
print(json.dumps(client.query(sys.argv[2])))
"""

# Run on the control host: requests to a serving node over HTTPS (the site CA verifies the server);
# the tokens come on stdin, never on a command line. Prints each answer's status.
REQUESTS = """
import json, ssl, sys, urllib.error, urllib.request
base, cafile, model = sys.argv[1:4]
context = ssl.create_default_context(cafile=cafile)
statuses = []
for token in json.load(sys.stdin):
    request = urllib.request.Request(
        f"{base}/v1/models/{model}/infer", data=b'{"inputs": [[0.5]]}', method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as answer:
            statuses.append(answer.status)
    except urllib.error.HTTPError as error:
        statuses.append(error.code)
print(json.dumps(statuses))
"""


def wait_until(what: str, deadline_s: float, probe: Callable[[], Any]) -> Any:
    """`probe()` every second until it returns something true; the deadline is scaled for a loaded
    machine (tests/waiting.py), while the alert test still bounds how long the alert itself took."""
    return wait_for(probe, what=what, timeout=deadline_s, every=1.0)


@dataclass(frozen=True)
class Load:
    """Who asks what of a serving host: the model it serves, its owner (allowed), a tenant with no
    grant on it (denied)."""

    host: str
    model: str
    owner: str
    denied_tenant: str


class Monitored:
    def __init__(self, deployed: DeployedLab, serving: list[str]) -> None:
        self.deployed = deployed
        self.lab: LabSession = deployed.lab
        self.serving = serving

    def deploy(self) -> Any:  # noqa: ANN401 - MonitoringResult
        """`aifactory up`'s monitoring stage, with 2 s scrape, evaluation and BMC power intervals."""
        from aifactory.deploy.monitoring import deploy_monitoring
        from aifactory.pipeline.connection import site_connection

        return deploy_monitoring(
            self.lab.planned,  # type: ignore[arg-type]
            connection=site_connection(self.lab.site),
            extra_vars={
                "monitoring_scrape_interval": INTERVAL,
                "monitoring_evaluation_interval": INTERVAL,
                "monitoring_power_interval": INTERVAL,
            },
        )

    def service_logs(self) -> str:
        """The last lines of every supervised service's log on every host (for a failure's message)."""
        script = 'for f in /var/log/aifactory-service/*.log; do echo "== $f"; tail -n 8 "$f"; done'
        return "".join(
            f"\n--- {host}\n" + self.lab.sh(script, host=host, check=False).stdout for host in self.lab.hosts
        )

    def status(self) -> dict[str, Any]:
        done = self.lab.exec(["aifactory", "status", str(self.lab.spec), "--format", "json"], timeout=300)
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def up(self) -> dict[str, bool | None]:
        return {h["name"]: h["up"] for h in self.status()["hosts"]}

    def wait_scraped(self, host: str) -> None:
        """Until Prometheus' last scrape of `host`'s inference server succeeded."""
        wait_until(
            f"{host} scraped", 180, lambda: scrape_targets(self, "serve").get(host, {}).get("health") == "up"
        )

    def load_for(self, host: str) -> Load:
        plan = self.lab.plan
        pool = plan.host(host).pool
        model = next(m for m in plan.models if pool in m.serve_on)
        resource = f"model/{model.name}"
        granted = {g.tenant for g in plan.access if g.resource == resource and "infer" in g.actions}
        denied = next(t.name for t in plan.tenants if t.name != model.owner and t.name not in granted)
        return Load(host, model.name, model.owner, denied)

    def send(self, load: Load, allowed: int, denied: int) -> list[int]:
        """`allowed` requests from the model's owner, then `denied` from the tenant without a grant, over
        HTTPS from the control host (tokens on stdin); each answer's status, in order."""
        from aifactory.telemetry.certs import monitoring_cert_dir
        from aifactory.trust.issuing.tokens import issue_token

        lab = self.lab
        trust = TrustFiles(SiteState.for_site(lab.site).subdir("runtime"))
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        owner = issue_token(trust, site=lab.site, tenant=load.owner, expires=expires).token
        refused = issue_token(trust, site=lab.site, tenant=load.denied_tenant, expires=expires).token
        address = lab.plan.host(load.host).management_address
        cafile = monitoring_cert_dir(trust) / "ca.pem"
        done = lab.exec(
            [sys.executable, "-c", REQUESTS, f"https://{address}:{SERVE_PORT}", str(cafile), load.model],
            input_text=json.dumps([owner] * allowed + [refused] * denied),
            timeout=600,
        )
        statuses: list[int] = json.loads(done.stdout)
        return statuses

    def query(self, expression: str) -> list[dict[str, Any]]:
        done = self.lab.exec([sys.executable, "-c", QUERY, str(self.lab.spec), expression], timeout=120)
        result: list[dict[str, Any]] = json.loads(done.stdout)
        return result


def install_file(lab: LabSession, host: str, source: Path, target: str) -> None:
    """Overwrite `target` on `host` with `source`'s bytes (the file keeps its owner and mode)."""
    lab.exec(["sh", "-c", f"cat > {target}"], host=host, input_text=source.read_text())


def serve_over_tls(deployed: DeployedLab, hosts: list[str], certs: Path) -> None:
    """Issue each serving host's certificate from the site CA into the runtime role's server-certs, then
    deploy those hosts: their inference servers serve HTTPS (docs/runtime.md). A site CA created here
    (the first certificate of the session) is an input of every host's deploy (the runtime role copies
    it everywhere), so then every host is deployed, and the session's deploy stays converged."""
    from aifactory.trust.certs import SiteCA
    from aifactory.trust.issuing.certs import issue_server_certificate

    lab = deployed.lab
    trust = TrustFiles(certs.parent)
    had_a_ca = SiteCA.of(trust).certificate.exists()
    for host in hosts:
        issue_server_certificate(
            trust,
            site=lab.site,
            server=host,
            addresses=(lab.plan.host(host).management_address,),
            expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=30),
            out_dir=certs,
        )
    result = deployed.deploy(DeployOptions(limit=",".join(hosts) if had_a_ca else None))
    assert result.exit_code == 0 and not result.failed_hosts, result.event_log


def monitored_lab(deployed_lab: DeployedLab) -> Iterator[Monitored]:
    """Deploy monitoring on the session lab for the telemetry lab modules; undo it after them."""
    lab = deployed_lab.lab
    serving = [h.name for h in lab.plan.hosts if h.role in ("gpu", "cpu")]
    assert serving, "the lab spec has no serving pool"
    certs = SiteState.for_site(lab.site).subdir("runtime") / "server-certs"
    assert not certs.exists(), "another test left server certificates behind"
    found = Monitored(deployed_lab, serving)
    try:
        serve_over_tls(deployed_lab, serving, certs)
        result = found.deploy()
        assert not result.failed_hosts, result.hosts
        yield found
    finally:
        # The lab is the session's: stop what this module started, and serve plain HTTP again.
        for host in lab.hosts:
            for service in (*SERVER_SERVICES, "prometheus-node-exporter", "aifactory-node-facts.timer"):
                lab.exec([SUPERVISOR, "stop", service], host=host, check=False)
        for path in certs.iterdir() if certs.exists() else ():
            path.unlink()
        if certs.exists():
            certs.rmdir()
        restored = deployed_lab.deploy(DeployOptions(limit=",".join(serving)))
        assert restored.exit_code == 0 and not restored.failed_hosts, restored.event_log


def scrape_targets(monitored: Monitored, job: str) -> dict[str, dict[str, Any]]:
    return {t["host"]: t for t in monitored.status()["targets"] if t["job"] == job}
