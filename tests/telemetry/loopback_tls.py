"""Certificates from a throwaway site CA for a service on loopback (the alert receiver, the power
collector): the CA, a server certificate for localhost/127.0.0.1, and Prometheus' service identity."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aifactory.trust.certs import PROMETHEUS_SERVICE
from aifactory.trust.issuing.certs import ensure_site_ca, issue_server_certificate, issue_service_certificate
from aifactory.trust.tokens import TrustFiles


@dataclass(frozen=True)
class LoopbackTls:
    trust: TrustFiles
    ca: Path  # the site CA's certificate
    server: Any  # .certificate, .key: the service's own, for localhost and 127.0.0.1
    prometheus: Any  # .certificate, .key: Prometheus' service identity, a client certificate


def loopback_tls(folder: Path, *, site: str, expires: datetime) -> LoopbackTls:
    trust = TrustFiles(folder / "runtime")
    ca = ensure_site_ca(trust, site=site).certificate
    server = issue_server_certificate(
        trust, site=site, server="localhost", addresses=("127.0.0.1",), expires=expires, out_dir=folder / "s"
    )
    prometheus = issue_service_certificate(
        trust, site=site, service=PROMETHEUS_SERVICE, expires=expires, out_dir=folder / "p"
    )
    return LoopbackTls(trust, ca, server, prometheus)
