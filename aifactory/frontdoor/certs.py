"""The front door's certificates, issued from the site CA on the control host.

    <state>/runtime/front-door-certs/
        ca.pem                   the site CA (HAProxy checks each node's certificate against it)
        front-door.pem, .key     the front door's service identity aifactory://<site>/service/front-door,
                                 the client certificate HAProxy's health checks present to the nodes

The front_door role copies them to the front door's host; `issue_front_door_certificates` issues only
what is missing or expires within RENEW_BEFORE, so deploy runs it before every run of a site with a
front door (as the monitoring deploy does for Prometheus' identity, aifactory.telemetry.certs).

A serving node behind the front door is reached at the front door's address: TLS goes through HAProxy
untouched, so the node's own certificate must name that address, and the name clients use for it (the
front door host's name), besides its own (`serving_names`; `aifactory token cert --server` adds them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aifactory.plan.model import FrontDoorPlan
from aifactory.trust.certs import FRONT_DOOR_SERVICE
from aifactory.trust.issuing.certs import (
    certificate_not_after,
    ensure_site_ca,
    issue_service_certificate,
    remove_issued,
    still_valid,
)
from aifactory.trust.tokens import TrustFiles

FRONT_DOOR_CERTS = "front-door-certs"
SERVICE_LIFETIME = timedelta(days=365)
RENEW_BEFORE = timedelta(days=60)  # as the monitoring certificates: well before they expire


@dataclass(frozen=True)
class FrontDoorCerts:
    folder: Path
    issued: bool  # False: the one there was still valid and was kept


@dataclass(frozen=True)
class ServingNames:
    """What a serving node's certificate names besides the node itself."""

    dns: tuple[str, ...]
    addresses: tuple[str, ...]


NO_NAMES = ServingNames((), ())


def front_door_cert_dir(trust: TrustFiles) -> Path:
    return trust.root / FRONT_DOOR_CERTS


def issue_front_door_certificates(
    trust: TrustFiles, *, site: str, now: datetime | None = None
) -> FrontDoorCerts:
    """The front door's service certificate (and the site CA beside it), where missing or expiring."""
    moment = now or datetime.now(UTC)
    folder = front_door_cert_dir(trust)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if still_valid(folder, FRONT_DOOR_SERVICE, now=moment, renew_before=RENEW_BEFORE):
        return FrontDoorCerts(folder, issued=False)
    ca = ensure_site_ca(trust, site=site, now=moment)
    expires = min(moment + SERVICE_LIFETIME, certificate_not_after(ca.certificate) - timedelta(days=1))
    remove_issued(folder, FRONT_DOOR_SERVICE)
    issue_service_certificate(
        trust, site=site, service=FRONT_DOOR_SERVICE, expires=expires, out_dir=folder, now=moment
    )
    return FrontDoorCerts(folder, issued=True)


def serving_names(front_door: FrontDoorPlan | None, server: str) -> ServingNames:
    """The front door's name and address when `server` is one of its backends; nothing otherwise (a
    host the front door does not send to keeps a certificate for itself alone)."""
    if front_door is None or server not in {backend.name for backend in front_door.backends}:
        return NO_NAMES
    return ServingNames((front_door.host,), (front_door.address,))
