"""The monitoring stage on the session's deployed lab: node exporter on every host, Prometheus and
Alertmanager on the control host, all with TLS from the site CA, the serving nodes' /metrics scraped,
alerts delivered to the operator log.

Real parts: the session's `deployed_lab` (namespaces with sshd and the lab's service supervisor, the
session bundle deployed: runtime, inference servers, Slurm), `deploy_monitoring` (what `aifactory up`'s
monitoring stage runs: certificates from the site CA, then playbooks/monitoring.yml through
ansible-runner), Debian's prometheus, prometheus-alertmanager and prometheus-node-exporter (installed
machine-wide by scripts/setup.sh; lab hosts share /usr), and `aifactory status` on the control host
reading Prometheus' HTTP API. The serving nodes get server certificates from the site CA for the
package (an admin's `aifactory token cert SITE --server HOST`), so they serve HTTPS and Prometheus
scrapes them with TLS; they are taken away again, and those hosts redeployed, after the telemetry lab
modules (the package-scoped `monitored` fixture, tests/telemetry/monitored_lab.py).
Scrapes and rule evaluations run every 2 s here (role variables), so the host-down alert (for: 1m)
fires in about a minute.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest

from aifactory.state import SiteState
from aifactory.telemetry.certs import monitoring_cert_dir
from aifactory.trust.tokens import TrustFiles
from tests.telemetry.monitored_lab import (
    DECISION_LOG,
    HOST_DOWN_FOR,
    INTERVAL,
    SERVE_PORT,
    SUPERVISOR,
    Monitored,
    install_file,
    scrape_targets,
    wait_until,
)

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_every_host_and_serving_node_is_scraped_with_tls_and_listed_by_status(monitored: Monitored) -> None:
    lab = monitored.lab

    def all_up() -> dict[str, Any] | None:
        # One status for every check below: a target's health in Prometheus' target list is "unknown"
        # until its first scrape after a reload, while `up` may still hold the last sample.
        status = monitored.status()
        up = {h["name"]: h["up"] for h in status["hosts"]}
        health = {(t["job"], t["host"]): t["health"] for t in status["targets"]}
        wanted = [("node", h) for h in lab.hosts] + [("serve", h) for h in monitored.serving]
        wanted += [("power", lab.plan.control_host)]  # the BMC power collector (the lab plans BMCs)
        ready = all(up.values()) and all(health.get(target) == "up" for target in wanted)
        return status if ready else None

    status = wait_until("every node exporter, serving node and the power collector up", 180, all_up)
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
    expected |= {("power", lab.plan.control_host)}
    assert set(up) == expected and set(up.values()) == {"1"}, up


def test_a_target_with_a_certificate_from_another_ca_is_down(monitored: Monitored, tmp_path: Path) -> None:
    from aifactory.trust.issuing.certs import issue_server_certificate

    lab = monitored.lab
    host = lab.hosts[-1]
    wait_until("every node exporter up", 180, lambda: all(monitored.up().values()))
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
    install_file(lab, host, issued.certificate, "/etc/prometheus/tls/host.pem")
    install_file(lab, host, issued.key, "/etc/prometheus/tls/host.key")
    lab.exec([SUPERVISOR, "restart", "prometheus-node-exporter"], host=host)
    try:
        # Down for its certificate: a scrape during the restart itself fails too, refused, and is
        # not what this test is after.
        wait_until(
            f"{host}'s node exporter with another CA's certificate down for its certificate",
            180,
            lambda: (
                (t := scrape_targets(monitored, "node").get(host))
                and t["health"] == "down"
                and "certificate" in (t["last_error"] or "")
                and t
            ),
        )
        assert monitored.up()[host] is False
        down = monitored.query(f'up{{job="node",host="{host}"}}')
        assert [r["value"][1] for r in down] == ["0"], down
    finally:
        # The site's own certificate back, as the role installed it.
        install_file(lab, host, site_certs / f"{host}.pem", "/etc/prometheus/tls/host.pem")
        install_file(lab, host, site_certs / f"{host}.key", "/etc/prometheus/tls/host.key")
        lab.exec([SUPERVISOR, "restart", "prometheus-node-exporter"], host=host)
    wait_until(f"{host}'s node exporter up again", 180, lambda: monitored.up()[host])


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
    host = monitored.serving[0]
    load = monitored.load_for(host)
    allowed, denied = 5, 3  # under the server's 20 denials per peer and window: no 429, no suppressed record

    monitored.wait_scraped(host)
    records_before = _decision_records(monitored, host)
    # The counter counts since the server started; the log also holds records from before: compare
    # what each gained, waiting until Prometheus has scraped the server after the last request.
    counted_before = _counted(monitored, host)  # nothing asked this server since the last scrapes
    statuses = monitored.send(load, allowed, denied)
    assert statuses[allowed:] == [403] * denied, statuses
    assert all(s in (200, 503) for s in statuses[:allowed]), statuses  # 503: no champion loaded yet

    new_records = _decision_records(monitored, host)[len(records_before) :]
    assert [r["allow"] for r in new_records] == [True] * allowed + [False] * denied, new_records
    expected = {
        "true": counted_before["true"] + allowed,
        "false": counted_before["false"] + denied,
    }
    counted = wait_until(
        "the decision counter in Prometheus",
        60,
        lambda: (c := _counted(monitored, host)) == expected and c,
    )
    assert sum(counted.values()) - sum(counted_before.values()) == len(new_records)


def test_stopping_a_node_exporter_fires_host_down_into_the_operator_log(monitored: Monitored) -> None:
    lab = monitored.lab
    host = lab.hosts[1]
    wait_until("every node exporter up", 180, lambda: all(monitored.up().values()))
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

        wait_until("HostDown firing", HOST_DOWN_FOR + 60, firing)
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

        found = wait_until("HostDown in the operator log", 120, recorded)
        assert found[0]["detail"]["labels"]["severity"] == "critical"
        assert SiteState.for_site(lab.site).verify_operator_log().ok
    finally:
        lab.exec([SUPERVISOR, "start", "prometheus-node-exporter"], host=host)
    wait_until(f"{host}'s node exporter up again", 180, lambda: monitored.up()[host])


CHECK = "aifactory-runtime-check.service"


def test_a_runtime_file_changed_on_a_host_fires_runtime_files_changed(monitored: Monitored) -> None:
    """SI-7 end to end: a file of the runtime in service rewritten on one host; the runtime role's
    check (its unit, stock sha256sum against the install's listing) fails; the facts script's timer
    exports it, Prometheus scrapes it and RuntimeFilesChanged fires for that host; put back and
    checked again, the alert resolves."""
    lab = monitored.lab
    host = lab.hosts[-1]
    folder = lab.exec(["readlink", "/opt/aifactory/current"], host=host).stdout.strip()
    listing = lab.exec(["cat", f"{folder}.sha256"], host=host).stdout
    names = [line.split("  ", 1)[1] for line in listing.splitlines()]
    target = f"{folder}/{next(name for name in names if name.endswith('.dist-info/METADATA'))}"
    saved = "/root/runtime-check-original"

    def firing() -> bool:
        return any(
            a["name"] == "RuntimeFilesChanged" and a["host"] == host and a["state"] == "firing"
            for a in monitored.status()["alerts"]
        )

    lab.exec(["cp", "-p", target, saved], host=host)
    lab.exec(["sh", "-c", 'echo tampered >> "$1"', "sh", target], host=host)
    try:
        failed = lab.exec([SUPERVISOR, "start", CHECK], host=host, check=False)
        assert failed.returncode != 0, failed.stdout
        wait_until("RuntimeFilesChanged firing", 120, firing)
    finally:
        lab.exec(["sh", "-c", 'cp -p "$1" "$2" && rm "$1"', "sh", saved, target], host=host)
    lab.exec([SUPERVISOR, "start", CHECK], host=host)
    wait_until("RuntimeFilesChanged resolved", 120, lambda: not firing())


def test_a_second_monitoring_deploy_changes_nothing(monitored: Monitored) -> None:
    result = monitored.deploy()
    assert result.hosts and result.changed == 0, result.hosts
