"""The monitoring certificates, issued from the site CA on the control host.

    <state>/runtime/monitoring-certs/
        ca.pem                 the site CA (what every scrape verifies against)
        <host>.pem, .key       each host's server certificate (its name and management address):
                               node exporter's, and on the monitoring host Prometheus' and Alertmanager's
        prometheus.pem, .key   Prometheus' client certificate, its service identity
                               aifactory://<site>/service/prometheus (Alertmanager sends with it too)

The monitoring role copies them to the hosts; `issue_monitoring_certificates` issues only what is
missing or expires within RENEW_BEFORE, so it runs before every monitoring deploy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aifactory.plan.model import SitePlan
from aifactory.trust.certs import PROMETHEUS_SERVICE
from aifactory.trust.issuing.certs import (
    certificate_not_after,
    ensure_site_ca,
    issue_server_certificate,
    issue_service_certificate,
    remove_issued,
    still_valid,
)
from aifactory.trust.tokens import TrustFiles

MONITORING_CERTS = "monitoring-certs"
SERVICE_LIFETIME = timedelta(days=365)
RENEW_BEFORE = timedelta(days=60)  # well before the 30-day CertificateExpiring alert
PROMETHEUS = PROMETHEUS_SERVICE


@dataclass(frozen=True)
class MonitoringCerts:
    folder: Path
    issued: tuple[str, ...]  # the subjects issued by this call (hosts, `prometheus`)
    kept: tuple[str, ...]  # those still valid, left as they were


def monitoring_cert_dir(trust: TrustFiles) -> Path:
    return trust.root / MONITORING_CERTS


def issue_monitoring_certificates(
    trust: TrustFiles, plan: SitePlan, *, now: datetime | None = None
) -> MonitoringCerts:
    """Every host's server certificate and Prometheus' service certificate, where missing or expiring."""
    moment = now or datetime.now(UTC)
    folder = monitoring_cert_dir(trust)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = ensure_site_ca(trust, site=plan.name, now=moment)
    expires = min(moment + SERVICE_LIFETIME, certificate_not_after(ca.certificate) - timedelta(days=1))
    issued: list[str] = []
    kept: list[str] = []
    for host in plan.hosts:
        if still_valid(folder, host.name, now=moment, renew_before=RENEW_BEFORE):
            kept.append(host.name)
            continue
        remove_issued(folder, host.name)
        issue_server_certificate(
            trust,
            site=plan.name,
            server=host.name,
            addresses=(host.management_address,),
            expires=expires,
            out_dir=folder,
            now=moment,
        )
        issued.append(host.name)
    if still_valid(folder, PROMETHEUS, now=moment, renew_before=RENEW_BEFORE):
        kept.append(PROMETHEUS)
    else:
        remove_issued(folder, PROMETHEUS)
        issue_service_certificate(
            trust, site=plan.name, service=PROMETHEUS, expires=expires, out_dir=folder, now=moment
        )
        issued.append(PROMETHEUS)
    return MonitoringCerts(folder, tuple(issued), tuple(kept))
