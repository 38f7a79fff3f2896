"""The monitoring stage on the session's deployed lab: node exporter on every host, Prometheus and
Alertmanager on the control host, all with TLS from the site CA, the serving nodes' /metrics scraped,
alerts delivered to the operator log.

Real parts: the session's `deployed_lab` (namespaces with sshd and the lab's service supervisor, the
session bundle deployed: runtime, inference servers, Slurm), `deploy_monitoring` (what `aifactory up`'s
monitoring stage runs: certificates from the site CA, then playbooks/monitoring.yml through
ansible-runner), Debian's prometheus, prometheus-alertmanager and prometheus-node-exporter (installed
machine-wide by scripts/setup.sh; lab hosts share /usr), and `aifactory status` on the control host
reading Prometheus' HTTP API. The serving nodes get server certificates from the site CA for the
module (an admin's `aifactory token cert SITE --server HOST`), so they serve HTTPS and Prometheus
scrapes them with TLS; the module takes them away again and redeploys those hosts at the end.
Scrapes and rule evaluations run every 2 s here (role variables), so the host-down alert (for: 1m)
fires in about a minute.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from aifactory.deploy import DeployOptions
from aifactory.state import SiteState
from aifactory.telemetry.certs import monitoring_cert_dir
from aifactory.trust.tokens import TrustFiles
from tests.conftest import DeployedLab, LabSession

pytestmark = [pytest.mark.lab, pytest.mark.slow]

INTERVAL = 2  # seconds between scrapes and rule evaluations in this module
SUPERVISOR = "/run/aifactory-lab/bin/aifactory-service"
SERVER_SERVICES = ("prometheus", "prometheus-alertmanager", "aifactory-alert-receiver")
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


def _wait(what: str, deadline_s: float, probe: Callable[[], Any]) -> Any:
    """`probe()` every second until it returns something true; the deadline is scaled for a loaded
    machine (tests/waiting.py), while the alert test still bounds how long the alert itself took."""
    return wait_for(probe, what=what, timeout=deadline_s, every=1.0)


class Monitored:
    def __init__(self, deployed: DeployedLab, serving: list[str]) -> None:
        self.deployed = deployed
        self.lab: LabSession = deployed.lab
        self.serving = serving

    def deploy(self) -> Any:  # noqa: ANN401 - MonitoringResult
        """`aifactory up`'s monitoring stage, with 2 s scrape and evaluation intervals."""
        from aifactory.deploy.monitoring import deploy_monitoring
        from aifactory.pipeline.connection import site_connection

        return deploy_monitoring(
            self.lab.planned,  # type: ignore[arg-type]
            connection=site_connection(self.lab.site),
            extra_vars={"monitoring_scrape_interval": INTERVAL, "monitoring_evaluation_interval": INTERVAL},
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

    def query(self, expression: str) -> list[dict[str, Any]]:
        done = self.lab.exec([sys.executable, "-c", QUERY, str(self.lab.spec), expression], timeout=120)
        result: list[dict[str, Any]] = json.loads(done.stdout)
        return result


def _install(lab: LabSession, host: str, source: Path, target: str) -> None:
    """Overwrite `target` on `host` with `source`'s bytes (the file keeps its owner and mode)."""
    lab.exec(["sh", "-c", f"cat > {target}"], host=host, input_text=source.read_text())


def _serve_over_tls(deployed: DeployedLab, hosts: list[str], certs: Path) -> None:
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


@pytest.fixture(scope="module")
def monitored(deployed_lab: DeployedLab) -> Iterator[Monitored]:
    lab = deployed_lab.lab
    serving = [h.name for h in lab.plan.hosts if h.role in ("gpu", "cpu")]
    assert serving, "the lab spec has no serving pool"
    certs = SiteState.for_site(lab.site).subdir("runtime") / "server-certs"
    assert not certs.exists(), "another test left server certificates behind"
    found = Monitored(deployed_lab, serving)
    try:
        _serve_over_tls(deployed_lab, serving, certs)
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


def _targets(monitored: Monitored, job: str) -> dict[str, dict[str, Any]]:
    return {t["host"]: t for t in monitored.status()["targets"] if t["job"] == job}


def test_every_host_and_serving_node_is_scraped_with_tls_and_listed_by_status(monitored: Monitored) -> None:
    lab = monitored.lab

    def all_up() -> dict[str, Any] | None:
        # One status for every check below: a target's health in Prometheus' target list is "unknown"
        # until its first scrape after a reload, while `up` may still hold the last sample.
        status = monitored.status()
        up = {h["name"]: h["up"] for h in status["hosts"]}
        health = {(t["job"], t["host"]): t["health"] for t in status["targets"]}
        wanted = [("node", h) for h in lab.hosts] + [("serve", h) for h in monitored.serving]
        ready = all(up.values()) and all(health.get(target) == "up" for target in wanted)
        return status if ready else None

    status = _wait("every node exporter and serving node up", 180, all_up)
    assert sorted(h["name"] for h in status["hosts"]) == sorted(lab.hosts)
    node_targets = {t["host"]: t for t in status["targets"] if t["job"] == "node"}
    assert sorted(node_targets) == sorted(lab.hosts)
    serve_targets = {t["host"]: t for t in status["targets"] if t["job"] == "serve"}
    assert sorted(serve_targets) == sorted(monitored.serving)
    for job, targets, port in (("node", node_targets, 9100), ("serve", serve_targets, SERVE_PORT)):
        for host, target in targets.items():
            assert target["health"] == "up", (job, target)
            # Over the management fabric, to the host's own lab address, with TLS.
            assert target["instance"] == f"{lab.plan.host(host).management_address}:{port}", target
            assert target["url"].startswith("https://"), target
    # The same through Prometheus' HTTP API: up == 1 for every target.
    up = {(r["metric"]["job"], r["metric"]["host"]): r["value"][1] for r in monitored.query("up")}
    expected = {("node", h) for h in lab.hosts} | {("serve", h) for h in monitored.serving}
    assert set(up) == expected and set(up.values()) == {"1"}, up


def test_a_target_with_a_certificate_from_another_ca_is_down(monitored: Monitored, tmp_path: Path) -> None:
    from aifactory.trust.issuing.certs import issue_server_certificate

    lab = monitored.lab
    host = lab.hosts[-1]
    _wait("every node exporter up", 180, lambda: all(monitored.up().values()))
    other = TrustFiles(tmp_path / "other-site")
    issued = issue_server_certificate(
        other,
        site=lab.site,  # the same names: only the CA differs
        server=host,
        addresses=(lab.plan.host(host).management_address,),
        expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=30),
        out_dir=tmp_path / "certs",
    )
    site_certs = monitoring_cert_dir(TrustFiles(SiteState.for_site(lab.site).path("runtime")))
    _install(lab, host, issued.certificate, "/etc/prometheus/tls/host.pem")
    _install(lab, host, issued.key, "/etc/prometheus/tls/host.key")
    lab.exec([SUPERVISOR, "restart", "prometheus-node-exporter"], host=host)
    try:
        target = _wait(
            f"{host}'s node exporter with another CA's certificate down",
            180,
            lambda: (t := _targets(monitored, "node").get(host)) and t["health"] == "down" and t,
        )
        assert "certificate" in (target["last_error"] or ""), target
        assert monitored.up()[host] is False
        down = monitored.query(f'up{{job="node",host="{host}"}}')
        assert [r["value"][1] for r in down] == ["0"], down
    finally:
        # The site's own certificate back, as the role installed it.
        _install(lab, host, site_certs / f"{host}.pem", "/etc/prometheus/tls/host.pem")
        _install(lab, host, site_certs / f"{host}.key", "/etc/prometheus/tls/host.key")
        lab.exec([SUPERVISOR, "restart", "prometheus-node-exporter"], host=host)
    _wait(f"{host}'s node exporter up again", 180, lambda: monitored.up()[host])


def _decision_records(monitored: Monitored, host: str) -> list[dict[str, Any]]:
    """The serving host's decision-log records (the live file and any rotated segments)."""
    done = monitored.lab.sh(f"cat {DECISION_LOG}.* {DECISION_LOG} 2>/dev/null", host=host, check=False)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _counted(monitored: Monitored, host: str) -> dict[str, int]:
    """Prometheus' aifactory_serve_decisions_total for `host`, by outcome (allow true/false), summed
    over its model and tenant labels."""
    found = monitored.query(f'aifactory_serve_decisions_total{{job="serve",host="{host}"}}')
    counts = {"true": 0, "false": 0}
    for row in found:
        counts[row["metric"]["allow"]] += int(float(row["value"][1]))
    return counts


def test_the_decision_counter_equals_the_decision_log_records(monitored: Monitored) -> None:
    from aifactory.trust.issuing.tokens import issue_token

    lab = monitored.lab
    host = monitored.serving[0]
    model = next(
        m for m in lab.plan.models if any(h.pool in m.serve_on for h in lab.plan.hosts if h.name == host)
    )
    granted = {
        g.tenant for g in lab.plan.access if g.resource == f"model/{model.name}" and "infer" in g.actions
    }
    denied_tenant = next(t.name for t in lab.plan.tenants if t.name != model.owner and t.name not in granted)
    state = SiteState.for_site(lab.site)
    trust = TrustFiles(state.subdir("runtime"))
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    allowed_token = issue_token(trust, site=lab.site, tenant=model.owner, expires=expires).token
    denied_token = issue_token(trust, site=lab.site, tenant=denied_tenant, expires=expires).token
    allowed, denied = 5, 3  # under the server's 20 denials per peer and window: no 429, no suppressed record

    _wait(f"{host} scraped", 180, lambda: _targets(monitored, "serve").get(host, {}).get("health") == "up")
    records_before = _decision_records(monitored, host)
    # The counter counts since the server started; the log also holds records from before: compare
    # what each gained, waiting until Prometheus has scraped the server after the last request.
    counted_before = _counted(monitored, host)  # nothing asked this server since the last scrapes
    address = lab.plan.host(host).management_address
    cafile = monitoring_cert_dir(trust) / "ca.pem"
    done = lab.exec(
        [sys.executable, "-c", REQUESTS, f"https://{address}:{SERVE_PORT}", str(cafile), model.name],
        input_text=json.dumps([allowed_token] * allowed + [denied_token] * denied),
        timeout=300,
    )
    statuses = json.loads(done.stdout)
    assert statuses[allowed:] == [403] * denied, statuses
    assert all(s in (200, 503) for s in statuses[:allowed]), statuses  # 503: no champion loaded yet

    new_records = _decision_records(monitored, host)[len(records_before) :]
    assert [r["allow"] for r in new_records] == [True] * allowed + [False] * denied, new_records
    expected = {
        "true": counted_before["true"] + allowed,
        "false": counted_before["false"] + denied,
    }
    counted = _wait(
        "the decision counter in Prometheus",
        60,
        lambda: (c := _counted(monitored, host)) == expected and c,
    )
    assert sum(counted.values()) - sum(counted_before.values()) == len(new_records)


def test_stopping_a_node_exporter_fires_host_down_into_the_operator_log(monitored: Monitored) -> None:
    lab = monitored.lab
    host = lab.hosts[1]
    _wait("every node exporter up", 180, lambda: all(monitored.up().values()))
    log = SiteState.for_site(lab.site).operator_log
    before = len(log.read_text().splitlines()) if log.exists() else 0
    stopped = time.monotonic()
    lab.exec([SUPERVISOR, "stop", "prometheus-node-exporter"], host=host)
    try:
        polled: list[float] = []

        def firing() -> bool:
            began = time.monotonic()
            alerts = monitored.status()["alerts"]
            polled.append(time.monotonic() - began)
            return any(
                a["name"] == "HostDown" and a["host"] == host and a["state"] == "firing" for a in alerts
            )

        _wait("HostDown firing", HOST_DOWN_FOR + 60, firing)
        elapsed = time.monotonic() - stopped
        # for: plus two evaluation intervals, plus one scrape to notice and the last poll's own time.
        assert elapsed <= HOST_DOWN_FOR + 2 * INTERVAL + INTERVAL + max(polled) + 1, elapsed

        def recorded() -> list[dict[str, Any]]:
            lines = log.read_text().splitlines()[before:] if log.exists() else []
            records = [json.loads(line) for line in lines]
            return [
                r
                for r in records
                if r.get("command") == "alert"
                and r.get("result") == "firing HostDown"
                and r.get("detail", {}).get("labels", {}).get("host") == host
            ]

        found = _wait("HostDown in the operator log", 120, recorded)
        assert found[0]["detail"]["labels"]["severity"] == "critical"
        assert SiteState.for_site(lab.site).verify_operator_log().ok
    finally:
        lab.exec([SUPERVISOR, "start", "prometheus-node-exporter"], host=host)
    _wait(f"{host}'s node exporter up again", 180, lambda: monitored.up()[host])


def test_a_second_monitoring_deploy_changes_nothing(monitored: Monitored) -> None:
    result = monitored.deploy()
    assert result.hosts and result.changed == 0, result.hosts
