"""Creating the site CA and issuing its certificates (the control host only: it holds the CA's key).

IA-5, SC-17 (a site-run PKI). Tenant client certificates carry the single SAN URI
aifactory://<site>/tenant/<tenant> that `aifactory.trust.certs` reads on nodes; server certificates
name a DNS name and its addresses. Issued keys are generated here, written 0600 and never logged; the
issuance is recorded (serial, tenant or server, SHA-256 fingerprint, expiry) in the hash-chained
`issued-tokens.jsonl`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aifactory.chain import ChainWriter
from aifactory.durable import atomic_write
from aifactory.errors import Location, UsageError
from aifactory.trust.certs import REVOCATION_PREFIX, SiteCA, revocation_id, service_uri, tenant_uri
from aifactory.trust.issuing.tokens import ensure_site_key
from aifactory.trust.tokens import TrustFiles

CA_LIFETIME = timedelta(days=5 * 365)
CLOCK_SKEW = timedelta(minutes=5)  # certificates are valid from a little before they are issued
# A DNS name (RFC 1123 labels of at most 63 characters, at most 253 in all).
DNS_NAME = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
DNS_NAME_MAX = 253


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: Path
    key: Path
    ca: Path
    serial: int
    sha256: str
    subject: str  # the tenant, or the server's name
    expires: datetime

    @property
    def revocation_id(self) -> str:
        return revocation_id(self.serial)


def ensure_site_ca(trust: TrustFiles, *, site: str, now: datetime | None = None) -> SiteCA:
    """Create the site CA on first use: a P-256 key generated here (0600) and a self-signed certificate."""
    ca = SiteCA.of(trust)
    if ca.key.exists() and ca.certificate.exists():
        return ca
    return create_ca(ca, site=site, now=now)


def create_ca(ca: SiteCA, *, site: str, now: datetime | None = None, successor: bool = False) -> SiteCA:
    """A new CA in `ca.root`: a P-256 key generated here (0600) and its self-signed certificate (the
    site's first CA, or with `successor` the next one a rotation stages beside it, whose name says when
    it was made: two CAs of one name in a trust bundle make TLS libraries pick an issuer by name and
    check a certificate against the wrong one)."""
    ca.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    moment = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = f"{site} site CA" + (f" {moment:%Y-%m-%dT%H:%M:%SZ}" if successor else "")
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aifactory"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(moment - CLOCK_SKEW)
        .not_valid_after(moment + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    atomic_write(ca.key, _private_pem(key), mode=0o600)
    atomic_write(ca.certificate, certificate.public_bytes(serialization.Encoding.PEM))
    return ca


def issue_client_certificate(
    trust: TrustFiles,
    *,
    site: str,
    tenant: str,
    expires: datetime,
    out_dir: Path,
    now: datetime | None = None,
) -> IssuedCertificate:
    """A client certificate naming `tenant` (SAN URI aifactory://site/tenant/T), written to out_dir."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", tenant):
        raise UsageError(
            f"{tenant[:60]!r} cannot be a tenant name in a certificate", hint="letters, digits, . _ -"
        )
    return _issue(
        trust,
        site=site,
        subject=tenant,
        names=[x509.UniformResourceIdentifier(tenant_uri(site, tenant))],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        expires=expires,
        out_dir=out_dir,
        now=now,
        event={"event": "certificate-issued", "kind": "client", "tenant": tenant},
    )


def issue_service_certificate(
    trust: TrustFiles,
    *,
    site: str,
    service: str,
    expires: datetime,
    out_dir: Path,
    now: datetime | None = None,
) -> IssuedCertificate:
    """A client certificate naming a site service (SAN URI aifactory://site/service/S), no tenant: the
    inference server grants `prometheus` /metrics and /healthz only (docs/telemetry.md)."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", service):
        raise UsageError(f"{service[:60]!r} cannot be a service name in a certificate", hint="a-z, 0-9, -")
    return _issue(
        trust,
        site=site,
        subject=service,
        names=[x509.UniformResourceIdentifier(service_uri(site, service))],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        expires=expires,
        out_dir=out_dir,
        now=now,
        event={"event": "certificate-issued", "kind": "service", "service": service},
    )


def issue_server_certificate(
    trust: TrustFiles,
    *,
    site: str,
    server: str,
    addresses: tuple[str, ...] = (),
    also_named: tuple[str, ...] = (),
    expires: datetime,
    out_dir: Path,
    now: datetime | None = None,
) -> IssuedCertificate:
    """A TLS server certificate for `server` (a DNS name), the other DNS names it answers for
    (`also_named`: the front door's, for a node behind it) and its IP addresses, written to out_dir."""
    # The name is also the file name in out_dir: a DNS name has no '/', no leading '.', no '..'.
    hint = "a DNS name: letters, digits and inner '-' in labels joined by '.' (gpu-001.site.example)"
    for name in (server, *also_named):
        if len(name) > DNS_NAME_MAX or not DNS_NAME.fullmatch(name):
            raise UsageError(f"{name[:60]!r} cannot be a server name in a certificate", hint=hint)
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dict.fromkeys((server, *also_named))]
    for address in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            raise UsageError(
                f"{address!r} is not an IP address", hint="give --address once per address"
            ) from None
    return _issue(
        trust,
        site=site,
        subject=server,
        names=names,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        expires=expires,
        out_dir=out_dir,
        now=now,
        event={
            "event": "certificate-issued",
            "kind": "server",
            "server": server,
            "addresses": list(addresses),
            **({"also_named": list(also_named)} if also_named else {}),
        },
    )


def _issue(
    trust: TrustFiles,
    *,
    site: str,
    subject: str,
    names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    expires: datetime,
    out_dir: Path,
    now: datetime | None,
    event: dict[str, object],
) -> IssuedCertificate:
    # Checked by each caller's grammar; kept here too, as the name becomes a file name in out_dir.
    if Path(subject).name != subject or subject.startswith("."):
        raise UsageError(f"{subject[:60]!r} cannot name a file in {out_dir}")
    moment = now or datetime.now(UTC)
    ensure_site_key(trust, site=site)  # the signed revocation list that certificates are checked against
    ca = ensure_site_ca(trust, site=site, now=moment)
    ca_key = _load_ca_key(ca)
    ca_certificate = issuing_certificate(ca, ca_key)
    ca_expires = ca_certificate.not_valid_after_utc
    if expires > ca_expires:
        raise UsageError(
            f"the certificate would outlive the site CA (valid until {ca_expires:%Y-%m-%d})",
            hint="give an earlier --expires",
        )
    cert_path, key_path = out_dir / f"{subject}.pem", out_dir / f"{subject}.key"
    for path in (cert_path, key_path):
        if path.exists():
            raise UsageError(
                f"{path} exists", hint="remove it or choose another -o folder (nothing was written)"
            )
    key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, site),
                    x509.NameAttribute(NameOID.COMMON_NAME, subject),
                ]
            )
        )
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(moment - CLOCK_SKEW)
        .not_valid_after(expires)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(key_path, _private_pem(key), mode=0o600)
    atomic_write(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
    ca_copy = out_dir / "ca.pem"
    if ca_copy.resolve() != ca.certificate.resolve():
        atomic_write(ca_copy, ca.certificate.read_bytes())
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
    with ChainWriter(trust.issued_log) as log:
        log.append(
            {
                **event,
                "time": _iso(moment),
                "site": site,
                "serial": f"{serial:x}",
                "sha256": fingerprint,
                "expires": _iso(expires),
            }
        )
    return IssuedCertificate(cert_path, key_path, ca_copy, serial, fingerprint, subject, expires)


def certificate_not_after(path: Path) -> datetime:
    """When the PEM certificate at `path` expires."""
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def still_valid(folder: Path, subject: str, *, now: datetime, renew_before: timedelta) -> bool:
    """Whether `folder` holds `subject`'s certificate and key, valid for more than `renew_before`."""
    cert, key = folder / f"{subject}.pem", folder / f"{subject}.key"
    return cert.is_file() and key.is_file() and certificate_not_after(cert) - now > renew_before


def remove_issued(folder: Path, subject: str) -> None:
    """`subject`'s certificate and key gone from `folder` (before issuing anew: `_issue` never overwrites)."""
    for suffix in ("pem", "key"):
        (folder / f"{subject}.{suffix}").unlink(missing_ok=True)


def certificate_revocation_id(text: str) -> str | None:
    """`cert:SERIAL` or the path of a PEM certificate -> its revocation id; None when neither."""
    if text.startswith(REVOCATION_PREFIX):
        serial = text[len(REVOCATION_PREFIX) :].lower().replace(":", "")
        if not re.fullmatch(r"[0-9a-f]{1,40}", serial):
            raise UsageError(f"{text!r} is not cert:<serial in hex>")
        return revocation_id(int(serial, 16))
    path = Path(text)
    try:
        if not path.is_file():
            return None
    except OSError:  # a token is not a file name (and may be longer than one can be)
        return None
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise UsageError(f"{path} is not a PEM certificate", location=Location(file=str(path))) from None
    return revocation_id(certificate.serial_number)


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    """A public key's DER SubjectPublicKeyInfo: one comparable form whatever the key's type."""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def issuing_certificate(ca: SiteCA, key: ec.EllipticCurvePrivateKey | None = None) -> x509.Certificate:
    """The certificate of the CA whose key is `ca.key`: ca.pem is the trust bundle, which holds two CAs
    while a rotation overlaps them (aifactory.trust.issuing.rotation); the one that issues is the one
    whose key is here. None of them: refused (a bundle that does not match its key is damaged)."""
    public = _spki((key or _load_ca_key(ca)).public_key())
    for certificate in x509.load_pem_x509_certificates(ca.certificate.read_bytes()):
        if _spki(certificate.public_key()) == public:
            return certificate
    raise UsageError(
        f"no certificate in {ca.certificate} belongs to the CA key {ca.key}",
        location=Location(file=str(ca.certificate)),
        hint="a rotation stopped midway? run `aifactory rotate SITE --what ca` again to resume it",
    )


def reissue_like(
    trust: TrustFiles, *, site: str, folder: Path, subject: str, now: datetime | None = None
) -> IssuedCertificate:
    """`folder/subject.pem` issued anew from the site CA's issuing key with the same names, usage and
    end (capped by the CA's), with a new key: what a rotation does to every certificate it renews."""
    old = x509.load_pem_x509_certificate((folder / f"{subject}.pem").read_bytes())
    names = list(old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    usages = list(old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    kinds = {ExtendedKeyUsageOID.SERVER_AUTH: "server", ExtendedKeyUsageOID.CLIENT_AUTH: "client"}
    if len(usages) != 1 or usages[0] not in kinds:
        raise UsageError(f"{folder / subject}.pem is not a certificate aifactory issued (its usage)")
    ca = SiteCA.of(trust)
    ca_end = issuing_certificate(ca).not_valid_after_utc - timedelta(days=1)
    expires = min(old.not_valid_after_utc, ca_end)
    remove_issued(folder, subject)
    return _issue(
        trust,
        site=site,
        subject=subject,
        names=names,
        usage=usages[0],
        expires=expires,
        out_dir=folder,
        now=now,
        event={"event": "certificate-reissued", "kind": kinds[usages[0]], "subject": subject},
    )


def _load_ca_key(ca: SiteCA) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(f"{ca.key} is not the site CA's ECDSA key", location=Location(file=str(ca.key)))
    return key


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
