"""Identity by client certificate from the site CA, over real TLS on loopback (IA-2, SC-8, SC-17).

One server requires client certificates (the mTLS default); clients are `http.client` with their own
`ssl` contexts. What the tests rely on: the tenant comes from the certificate's SAN URI, the policy
still decides, revoked certificates are refused through the signed revocation list, the TLS layer
refuses expired, not-yet-valid and foreign certificates, and a token naming another tenant than the
certificate is denied.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from waiting import wait_for

from aifactory.trust.certs import PROMETHEUS_SERVICE, SiteCA, read_peer_certificate
from aifactory.trust.issuing.certs import (
    IssuedCertificate,
    issue_client_certificate,
    issue_server_certificate,
    issue_service_certificate,
)
from aifactory.trust.issuing.tokens import revoke_token
from aifactory.trust.tokens import TrustFiles

from .conftest import SITE, RuntimeSite
from .serving import BODY, PATH, Server, records, start_server, wait_for_model, write_checkpoint

pytest.importorskip("torch")

DAY = timedelta(days=1)
TLS_REFUSED = (ssl.SSLError, ConnectionError)  # TLS 1.3: the server's alert may arrive as a reset


def _client_cert(
    trust: TrustFiles, folder: Path, tenant: str, *, site: str = SITE, now: datetime | None = None
) -> IssuedCertificate:
    moment = now or datetime.now(UTC)
    return issue_client_certificate(
        trust, site=site, tenant=tenant, expires=moment + DAY, out_dir=folder, now=moment
    )


def _context(ca: Path, issued: IssuedCertificate | None = None) -> ssl.SSLContext:
    """A client that trusts the site CA and, when given one, presents its certificate."""
    context = ssl.create_default_context(cafile=str(ca))
    if issued:
        context.load_cert_chain(str(issued.certificate), str(issued.key))
    return context


@pytest.fixture(scope="module")
def certs(site: RuntimeSite, tmp_path_factory: pytest.TempPathFactory) -> dict[str, IssuedCertificate]:
    """The server's certificate and one client certificate per tenant, all from the site CA."""
    folder = tmp_path_factory.mktemp("certs")
    issued = {
        tenant: _client_cert(site.trust, folder / tenant, tenant)
        for tenant in ("health", "research", "analyst", "visitor")
    }
    issued["prometheus"] = issue_service_certificate(
        site.trust,
        site=SITE,
        service=PROMETHEUS_SERVICE,
        expires=datetime.now(UTC) + DAY,
        out_dir=folder / "prometheus",
    )
    issued["server"] = issue_server_certificate(
        site.trust,
        site=SITE,
        server="localhost",
        addresses=("127.0.0.1",),
        expires=datetime.now(UTC) + DAY,
        out_dir=folder / "server",
    )
    return issued


@pytest.fixture(scope="module")
def mtls_server(
    site: RuntimeSite, certs: dict[str, IssuedCertificate], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("mtls")
    write_checkpoint(site, root / "storage")
    server_cert = certs["server"]
    running = start_server(
        site,
        root / "storage",
        root / "node-runtime",
        "--tls-cert",
        str(server_cert.certificate),
        "--tls-key",
        str(server_cert.key),
        "--tls-client-ca",
        str(SiteCA.of(site.trust).certificate),
        tls=_context(server_cert.ca, certs["health"]),
    )
    running.metrics_tls = _context(server_cert.ca, certs["prometheus"])
    wait_for_model(running)
    yield running
    running.stop()


def test_issued_certificates_name_the_tenant_and_keep_their_keys_private(
    site: RuntimeSite, certs: dict[str, IssuedCertificate]
) -> None:
    health = certs["health"]
    certificate = x509.load_pem_x509_certificate(health.certificate.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["aifactory://rtlab/tenant/health"]
    assert certificate.issuer == x509.load_pem_x509_certificate(health.ca.read_bytes()).subject
    for key in (health.key, SiteCA.of(site.trust).key):
        assert key.stat().st_mode & 0o777 == 0o600
    peer = read_peer_certificate(certificate.public_bytes(Encoding.DER), site=SITE)
    assert (peer.tenant, peer.problem, peer.serial) == ("health", None, health.serial)
    issued_log = site.trust.issued_log.read_text()
    assert f'"serial":"{health.serial:x}"' in issued_log and "PRIVATE KEY" not in issued_log


@pytest.mark.parametrize("tenant", ["analyst", "health"])
def test_a_tenant_identified_by_its_certificate_alone_is_served(
    mtls_server: Server, certs: dict[str, IssuedCertificate], tenant: str
) -> None:
    issued = certs[tenant]
    status, answer = mtls_server.call("POST", PATH, BODY, context=_context(issued.ca, issued))
    assert status == 200, answer
    record = records(mtls_server)[answer["decision_id"]]
    assert (record["tenant"], record["allow"], record["identity"], record["token_id"]) == (
        tenant,
        True,
        "certificate",
        None,
    )
    assert record["certificate"] == {"serial": f"{issued.serial:x}", "sha256": issued.sha256}


@pytest.mark.parametrize(
    ("tenant", "reason"), [("research", "clearance-below-classification"), ("visitor", "no-grant")]
)
def test_a_tenant_the_policy_refuses_gets_403_by_certificate_too(
    mtls_server: Server, certs: dict[str, IssuedCertificate], tenant: str, reason: str
) -> None:
    issued = certs[tenant]
    status, answer = mtls_server.call(
        "POST", PATH, BODY, context=_context(issued.ca, issued), headers={"X-Tenant": "health"}
    )
    assert (status, answer["error"], answer["reason"]) == (403, "forbidden", reason)
    assert "confidential" not in json.dumps(answer)
    record = records(mtls_server)[answer["decision_id"]]
    assert (record["tenant"], record["allow"], record["identity"]) == (tenant, False, "certificate")


def test_a_token_and_a_certificate_must_name_the_same_tenant(
    mtls_server: Server, site: RuntimeSite, certs: dict[str, IssuedCertificate]
) -> None:
    analyst = _context(certs["analyst"].ca, certs["analyst"])
    status, answer = mtls_server.call("POST", PATH, BODY, token=site.tokens["health"], context=analyst)
    assert (status, answer["reason"]) == (403, "identity-mismatch")
    record = records(mtls_server)[answer["decision_id"]]
    assert (record["tenant"], record["allow"]) == (None, False)
    assert record["certificate"]["serial"] == f"{certs['analyst'].serial:x}"
    status, answer = mtls_server.call("POST", PATH, BODY, token=site.tokens["analyst"], context=analyst)
    assert status == 200
    record = records(mtls_server)[answer["decision_id"]]
    assert (record["identity"], record["tenant"]) == ("token+certificate", "analyst")
    assert record["token_id"] is not None


def test_a_revoked_token_is_refused_even_with_a_good_certificate(
    mtls_server: Server, site: RuntimeSite, certs: dict[str, IssuedCertificate]
) -> None:
    status, answer = mtls_server.call(
        "POST",
        PATH,
        BODY,
        token=site.tokens["revoked"],
        context=_context(certs["health"].ca, certs["health"]),
    )
    assert (status, answer["reason"]) == (403, "token-revoked")


def test_a_certificate_revoked_while_the_server_runs_is_refused(
    mtls_server: Server, site: RuntimeSite, tmp_path: Path
) -> None:
    issued = _client_cert(site.trust, tmp_path, "analyst")
    client = _context(issued.ca, issued)
    connection = mtls_server.connection(client)  # a keep-alive connection made before the revocation
    connection.request("POST", PATH, body=json.dumps(BODY), headers={"Content-Type": "application/json"})
    assert connection.getresponse().read() and mtls_server.call("POST", PATH, BODY, context=client)[0] == 200
    revoke_token(site.trust, site=SITE, token_id=issued.revocation_id, reason="test: key lost")
    time.sleep(0.7)  # the server looks at the revocation list at most every 0.5 s
    status, answer = mtls_server.call("POST", PATH, BODY, context=client)
    assert (status, answer["reason"]) == (403, "cert-revoked")
    assert records(mtls_server)[answer["decision_id"]]["certificate"]["serial"] == f"{issued.serial:x}"
    connection.request("POST", PATH, body=json.dumps(BODY), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert (response.status, json.loads(response.read())["reason"]) == (403, "cert-revoked")
    connection.close()


def test_a_certificate_for_another_site_names_no_tenant_here(
    mtls_server: Server, site: RuntimeSite, tmp_path: Path
) -> None:
    issued = _client_cert(site.trust, tmp_path, "health", site="elsewhere")  # same CA, another site's URI
    status, answer = mtls_server.call("POST", PATH, BODY, context=_context(issued.ca, issued))
    assert (status, answer["reason"]) == (403, "cert-wrong-site")


@pytest.mark.parametrize(
    ("issued_at", "reason"),
    [
        (datetime.now(UTC) - 3 * DAY, "certificate has expired"),
        (datetime.now(UTC) + 2 * DAY, "certificate is not yet valid"),
    ],
    ids=["expired", "not-yet-valid"],
)
def test_the_tls_layer_refuses_a_certificate_outside_its_validity(
    mtls_server: Server, site: RuntimeSite, tmp_path: Path, issued_at: datetime, reason: str
) -> None:
    issued = _client_cert(site.trust, tmp_path, "health", now=issued_at)
    _assert_refused(mtls_server, _context(issued.ca, issued), reason=reason)


def test_the_tls_layer_refuses_a_certificate_from_another_ca(
    mtls_server: Server, site: RuntimeSite, tmp_path: Path
) -> None:
    other = TrustFiles(tmp_path / "other-runtime")  # another CA, issuing for this site's name and tenant
    issued = _client_cert(other, tmp_path / "other", "health")
    _assert_refused(
        mtls_server,
        _context(site.trust.root / "site-ca" / "ca.pem", issued),
        reason="unable to get local issuer",
    )


def test_the_tls_layer_refuses_a_client_without_a_certificate(mtls_server: Server, site: RuntimeSite) -> None:
    _assert_refused(
        mtls_server,
        _context(SiteCA.of(site.trust).certificate),
        token=site.tokens["health"],
        reason="PEER_DID_NOT_RETURN_A_CERTIFICATE",
    )


def test_metrics_are_for_prometheus_service_identity_only(
    mtls_server: Server, site: RuntimeSite, certs: dict[str, IssuedCertificate]
) -> None:
    ca = certs["server"].ca
    status, answer = mtls_server.call("GET", "/metrics", context=_context(ca, certs["prometheus"]))
    assert status == 200 and "aifactory_serve_decisions_total" in answer["text"]
    # A tenant's certificate, even with its token, reads no metrics.
    status, answer = mtls_server.call(
        "GET", "/metrics", token=site.tokens["health"], context=_context(ca, certs["health"])
    )
    assert (status, answer["reason"]) == (403, "metrics-need-service-identity")
    # The service identity gets /healthz's full answer, and nothing else: no model.
    status, health = mtls_server.call("GET", "/healthz", context=_context(ca, certs["prometheus"]))
    assert status == 200 and health["site"] == SITE and "vitals-mlp" in health["models"]
    before = len(records(mtls_server))
    status, answer = mtls_server.call("POST", PATH, BODY, context=_context(ca, certs["prometheus"]))
    assert status == 403 and answer["reason"] == "cert-no-tenant"
    assert len(records(mtls_server)) == before + 1  # the refusal is a decision, recorded


def test_a_service_certificate_names_a_service_and_no_tenant(certs: dict[str, IssuedCertificate]) -> None:
    der = x509.load_pem_x509_certificate(certs["prometheus"].certificate.read_bytes()).public_bytes(
        Encoding.DER
    )
    peer = read_peer_certificate(der, site=SITE)
    assert (peer.tenant, peer.service, peer.problem) == (None, "prometheus", "cert-no-tenant")
    assert read_peer_certificate(der, site="elsewhere").service is None


def _assert_refused(
    server: Server, context: ssl.SSLContext, *, reason: str, token: str | None = None
) -> None:
    """Refused at the handshake: nothing decided, the refusal logged with OpenSSL's reason and counted."""
    before = len(records(server))
    logged = len(server.output)
    connection = server.connection(context)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    with pytest.raises(TLS_REFUSED):
        connection.request("POST", PATH, body=json.dumps(BODY), headers=headers)
        connection.getresponse()
    connection.close()
    assert len(records(server)) == before  # refused before any request was read
    assert server.call("GET", "/healthz")[0] == 200  # by the handshake, not by a server that went away
    wait_for(
        lambda: any("refused: " + reason in line for line in server.output[logged:]),
        what=f"the server to log the refusal ({reason})",
        timeout=10,
        every=0.05,
        detail=lambda: "".join(server.output[logged:]),
    )
    metrics = server.call("GET", "/metrics", context=server.metrics_tls)[1]["text"]
    assert f'aifactory_serve_tls_refused_total{{reason="{reason}' in metrics


def test_optional_client_certificates_let_a_token_alone_through(
    site: RuntimeSite, certs: dict[str, IssuedCertificate], tmp_path: Path
) -> None:
    write_checkpoint(site, tmp_path / "storage")
    ca = SiteCA.of(site.trust).certificate
    running = start_server(
        site,
        tmp_path / "storage",
        tmp_path / "runtime",
        "--tls-cert",
        str(certs["server"].certificate),
        "--tls-key",
        str(certs["server"].key),
        "--tls-client-ca",
        str(ca),
        "--tls-client-auth",
        "optional",
        tls=_context(ca),
    )
    try:
        wait_for_model(running)
        assert running.call("POST", PATH, BODY, token=site.tokens["analyst"])[0] == 200
        status, answer = running.call("POST", PATH, BODY)
        assert (status, answer["reason"]) == (403, "token-missing")
        assert running.call("POST", PATH, BODY, context=_context(ca, certs["analyst"]))[0] == 200
        with pytest.raises(ssl.SSLError):  # a client that does not trust the site CA
            untrusting = http.client.HTTPSConnection(
                "localhost", running.port, timeout=10, context=ssl.create_default_context()
            )
            untrusting.request("GET", "/healthz")
    finally:
        assert running.stop() == 0


def test_token_cert_cli_issues_and_revokes(tmp_path: Path) -> None:
    """`aifactory token cert` / `token revoke cert:SERIAL` against a site spec, in a fresh state home."""
    spec = Path(__file__).parent / "fixtures" / "site.yaml"
    env = {"AIFACTORY_STATE_HOME": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aifactory.cli.main", *argv], capture_output=True, text=True, env=env
        )

    issued = cli(
        "token", "cert", str(spec), "--tenant", "health", "-o", str(tmp_path / "out"), "--format", "json"
    )
    assert issued.returncode == 0, issued.stderr
    answer = json.loads(issued.stdout)
    assert Path(answer["key"]).stat().st_mode & 0o777 == 0o600
    assert "PRIVATE" not in issued.stdout + issued.stderr
    again = cli("token", "cert", str(spec), "--tenant", "health", "-o", str(tmp_path / "out"))
    assert again.returncode == 2 and "exists" in again.stderr  # never overwrites a key
    unknown = cli("token", "cert", str(spec), "--tenant", "nobody", "-o", str(tmp_path / "x"))
    assert unknown.returncode == 2 and "no tenant 'nobody'" in unknown.stderr
    revoked = cli("token", "revoke", str(spec), answer["certificate"], "--format", "json")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked"] == answer["revocation_id"] == f"cert:{answer['serial']}"
