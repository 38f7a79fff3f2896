"""Tokens: issued by the site key, verified by the runtime, refused when forged, expired or revoked."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aifactory.errors import TokenRejected
from aifactory.signing import ssh_keygen_verify
from aifactory.trust.issuing.tokens import issue_token, parse_expiry, revoke_token
from aifactory.trust.tokens import TokenVerifier, TrustFiles

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture()
def trust(tmp_path: Path) -> TrustFiles:
    return TrustFiles(tmp_path / "runtime")


def _issue(trust: TrustFiles, tenant: str = "health", days: int = 1) -> str:
    return issue_token(trust, site="lab", tenant=tenant, expires=NOW + timedelta(days=days), now=NOW).token


def test_issued_token_verifies_and_names_its_tenant(trust: TrustFiles) -> None:
    token = _issue(trust)
    claims = TokenVerifier(trust, site="lab").verify(token, now=NOW.timestamp())
    assert (claims.tenant, claims.site) == ("health", "lab")
    assert oct(trust.private_key.stat().st_mode & 0o777) == "0o600"


def test_a_self_asserted_tenant_is_refused(trust: TrustFiles) -> None:
    token = _issue(trust, tenant="research")
    prefix, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["tenant"] = "health"  # the bearer edits the tenant name
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    with pytest.raises(TokenRejected) as caught:
        TokenVerifier(trust, site="lab").verify(f"{prefix}.{forged_payload}.{signature}", now=NOW.timestamp())
    assert caught.value.reason == "token-bad-signature"


def test_a_token_from_another_sites_key_is_refused(tmp_path: Path, trust: TrustFiles) -> None:
    other = TrustFiles(tmp_path / "other")
    token = _issue(other)
    _issue(trust)  # creates this site's key
    with pytest.raises(TokenRejected) as caught:
        TokenVerifier(trust, site="lab").verify(token, now=NOW.timestamp())
    assert caught.value.reason == "token-bad-signature"


def test_expired_and_malformed_and_missing_tokens(trust: TrustFiles) -> None:
    verifier = TokenVerifier(trust, site="lab")
    token = _issue(trust, days=1)
    with pytest.raises(TokenRejected) as expired:
        verifier.verify(token, now=(NOW + timedelta(days=2)).timestamp())
    assert expired.value.reason == "token-expired"
    for bad, reason in (
        ("", "token-missing"),
        (None, "token-missing"),
        ("aft1.x", "token-malformed"),
        ("Bearer abc.def.ghi", "token-malformed"),
    ):
        with pytest.raises(TokenRejected) as caught:
            verifier.verify(bad, now=NOW.timestamp())
        assert caught.value.reason == reason


def test_revocation_is_picked_up_by_a_running_verifier(trust: TrustFiles) -> None:
    token = _issue(trust)
    keep = _issue(trust, tenant="research")
    verifier = TokenVerifier(trust, site="lab")
    verifier.verify(token, now=NOW.timestamp())  # cached as valid
    time.sleep(0.01)  # a distinct mtime
    revoke_token(trust, site="lab", token_id=_id(token), reason="lost laptop", now=NOW)
    with pytest.raises(TokenRejected) as caught:
        verifier.verify(token, now=NOW.timestamp())
    assert caught.value.reason == "token-revoked"
    assert verifier.verify(keep, now=NOW.timestamp()).tenant == "research"


def test_a_tampered_revocation_list_fails_closed(trust: TrustFiles) -> None:
    token = _issue(trust)
    revoke_token(trust, site="lab", token_id="0" * 16, now=NOW)
    document = json.loads(trust.revocations.read_text())
    document["revoked"] = []  # someone un-revokes everything without the site key
    trust.revocations.write_text(json.dumps(document))
    with pytest.raises(TokenRejected) as caught:
        TokenVerifier(trust, site="lab").verify(token, now=NOW.timestamp())
    assert caught.value.reason == "revocation-list-invalid"
    trust.revocations.unlink()
    with pytest.raises(TokenRejected) as missing:
        TokenVerifier(trust, site="lab").verify(token, now=NOW.timestamp())
    assert missing.value.reason == "revocation-list-invalid"


def test_wrong_site_is_refused(trust: TrustFiles) -> None:
    token = _issue(trust)
    with pytest.raises(TokenRejected) as caught:
        TokenVerifier(trust, site="abuja-1").verify(token, now=NOW.timestamp())
    assert caught.value.reason == "token-wrong-site"


def test_token_signature_verifies_with_ssh_keygen(tmp_path: Path, trust: TrustFiles) -> None:
    token = _issue(trust)
    _prefix, payload, blob = token.split(".")
    data = tmp_path / "payload"
    data.write_bytes(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    encoded = base64.b64encode(base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))).decode()
    (tmp_path / "payload.sig").write_text(
        "-----BEGIN SSH SIGNATURE-----\n" + encoded + "\n-----END SSH SIGNATURE-----\n"
    )
    result = ssh_keygen_verify(
        data,
        tmp_path / "payload.sig",
        allowed_signers=trust.allowed_signers,
        identity="lab-tokens",
        namespace="aifactory-token",
    )
    assert result.returncode == 0, result.stderr


def test_expiry_parsing_bounds() -> None:
    assert parse_expiry("12h", now=NOW) == NOW + timedelta(hours=12)
    assert parse_expiry("2027-01-31", now=NOW) == datetime(2027, 1, 31, tzinfo=UTC)
    for text in ("yesterday", "2020-01-01", "400d"):
        with pytest.raises(Exception) as caught:
            parse_expiry(text, now=NOW)
        assert caught.value.exit_code == 2  # type: ignore[attr-defined]


def test_cli_issue_and_revoke(tmp_path: Path) -> None:
    env = {**os.environ, "AIFACTORY_STATE_HOME": str(tmp_path)}
    spec = Path(__file__).resolve().parents[2] / "inventory" / "lab" / "site.yaml"
    cli = [sys.executable, "-m", "aifactory.cli.main"]
    issued = subprocess.run(
        [*cli, "token", "issue", str(spec), "--tenant", "health", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = json.loads(issued.stdout)
    assert token["tenant"] == "health" and token["token"].startswith("aft1.")
    unknown = subprocess.run(
        [*cli, "token", "issue", str(spec), "--tenant", "nobody"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert unknown.returncode == 2 and "no tenant 'nobody'" in unknown.stderr
    revoked = subprocess.run(
        [*cli, "token", "revoke", "lab", token["id"]], env=env, capture_output=True, text=True, check=True
    )
    assert token["id"] in revoked.stdout
    trust = TrustFiles(tmp_path / "lab" / "runtime")
    with pytest.raises(TokenRejected):
        TokenVerifier(trust, site="lab").verify(token["token"])
    assert token["token"] not in (
        trust.issued_log.read_text() + (tmp_path / "lab" / "operator.log.jsonl").read_text()
    )


def _id(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["id"])
