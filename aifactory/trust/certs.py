"""The site CA's X.509 certificates as nodes read them: which tenant a verified client certificate names.

IA-2, IA-5 (authenticator management), SC-8 (TLS), SC-17 (a site-run PKI). A tenant may present a
client certificate from the site CA instead of, or beside, a token. The rule for its identity:

    the tenant is the certificate's single SAN URI  aifactory://<site>/tenant/<tenant>

A site service (Prometheus) has a client certificate of its own instead, naming no tenant:

    the service is the certificate's single SAN URI  aifactory://<site>/service/<service>

The inference server grants the service `prometheus` its /metrics and the full /healthz answer, and
nothing else (docs/telemetry.md). The subject's common name repeats the tenant or service for people
reading the certificate, but it is never read. A certificate without exactly one such URI, for
another site, or without the clientAuth extended key usage names no tenant and is refused. The TLS
layer checks the chain to the site CA and the validity dates; the runtime then checks revocation
against the same signed revocation list as tokens (entries `cert:<serial in hex>`) and compares the
tenant with a token's, when both come.

Files, in the site's runtime folder (beside the token key):

    site-ca/ca.key     the CA's private key (ECDSA P-256, 0600; on the admin's machine only)
    site-ca/ca.pem     its certificate: what nodes verify client certificates against (--tls-client-ca)

Issued keys are generated here, written 0600 and never logged; the issuance is recorded (serial,
tenant or server, SHA-256 fingerprint, expiry) in the hash-chained `issued-tokens.jsonl`.

This module is the verifying side (nodes): the naming rule, the CA's file paths and reading a peer
certificate. Creating the CA and issuing certificates, which need the CA's private key, live in
`aifactory.trust.issuing.certs` (the control host only).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from aifactory.trust.tokens import TrustFiles

TENANT_URI = re.compile(r"aifactory://(?P<site>[^/]+)/tenant/(?P<tenant>[^/]+)")
SERVICE_URI = re.compile(r"aifactory://(?P<site>[^/]+)/service/(?P<service>[^/]+)")
PROMETHEUS_SERVICE = "prometheus"  # the identity Prometheus scrapes with
FRONT_DOOR_SERVICE = "front-door"  # the identity the front door (HAProxy) checks nodes' health with
REVOCATION_PREFIX = "cert:"


def tenant_uri(site: str, tenant: str) -> str:
    return f"aifactory://{site}/tenant/{tenant}"


def service_uri(site: str, service: str) -> str:
    return f"aifactory://{site}/service/{service}"


def revocation_id(serial: int) -> str:
    """The id a certificate has in the signed revocation list."""
    return f"{REVOCATION_PREFIX}{serial:x}"


@dataclass(frozen=True)
class SiteCA:
    """Where the runtime folder keeps the site CA."""

    root: Path

    @classmethod
    def of(cls, trust: TrustFiles) -> SiteCA:
        return cls(trust.root / "site-ca")

    @property
    def key(self) -> Path:
        return self.root / "ca.key"

    @property
    def certificate(self) -> Path:
        return self.root / "ca.pem"


@dataclass(frozen=True)
class PeerCertificate:
    """A client certificate the TLS layer verified against the site CA, read once per connection.

    `tenant` is None when the certificate names none; `problem` then says why (a reason code).
    """

    serial: int
    sha256: str
    not_after: float  # seconds since the epoch
    tenant: str | None
    problem: str | None = None
    service: str | None = None  # a site service's identity (no tenant then)

    @property
    def revocation_id(self) -> str:
        return revocation_id(self.serial)

    def describe(self) -> dict[str, str]:
        return {"serial": f"{self.serial:x}", "sha256": self.sha256}


def read_peer_certificate(der: bytes, *, site: str) -> PeerCertificate:
    """Read the tenant from a verified certificate's SAN URI (the rule in this module's docstring)."""
    certificate = x509.load_der_x509_certificate(der)
    tenant, problem = _tenant_of(certificate, site=site)
    return PeerCertificate(
        serial=certificate.serial_number,
        sha256=hashlib.sha256(der).hexdigest(),
        not_after=certificate.not_valid_after_utc.timestamp(),
        tenant=tenant,
        problem=problem,
        service=_service_of(certificate, site=site) if tenant is None else None,
    )


def _service_of(certificate: x509.Certificate, *, site: str) -> str | None:
    """The site service a client certificate names: its single SAN URI aifactory://<site>/service/S."""
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages or len(uris) != 1:
        return None
    match = SERVICE_URI.fullmatch(uris[0])
    return match["service"] if match and match["site"] == site else None


def _tenant_of(certificate: x509.Certificate, *, site: str) -> tuple[str | None, str | None]:
    """(tenant, None) or (None, reason code)."""
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None, "cert-no-tenant"
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        return None, "cert-not-for-clients"
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    matches = [match for match in map(TENANT_URI.fullmatch, uris) if match]
    if len(matches) != 1:
        return None, "cert-no-tenant"
    if matches[0]["site"] != site:
        return None, "cert-wrong-site"
    return matches[0]["tenant"], None
