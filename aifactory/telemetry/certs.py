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

from cryptography import x509

from aifactory.plan.model import SitePlan
from aifactory.trust.certs import PROMETHEUS_SERVICE
from aifactory.trust.issuing.certs import ensure_site_ca, issue_server_certificate, issue_service_certificate
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
    expires = min(moment + SERVICE_LIFETIME, _not_after(ca.certificate) - timedelta(days=1))
    issued: list[str] = []
    kept: list[str] = []
    for host in plan.hosts:
        if _still_valid(folder, host.name, moment):
            kept.append(host.name)
            continue
        _clear(folder, host.name)
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
    if _still_valid(folder, PROMETHEUS, moment):
        kept.append(PROMETHEUS)
    else:
        _clear(folder, PROMETHEUS)
        issue_service_certificate(
            trust, site=plan.name, service=PROMETHEUS, expires=expires, out_dir=folder, now=moment
        )
        issued.append(PROMETHEUS)
    return MonitoringCerts(folder, tuple(issued), tuple(kept))


def _not_after(path: Path) -> datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def _still_valid(folder: Path, subject: str, moment: datetime) -> bool:
    cert, key = folder / f"{subject}.pem", folder / f"{subject}.key"
    return cert.is_file() and key.is_file() and _not_after(cert) - moment > RENEW_BEFORE


def _clear(folder: Path, subject: str) -> None:
    for suffix in ("pem", "key"):
        (folder / f"{subject}.{suffix}").unlink(missing_ok=True)
