"""Issuing and revoking the site's bearer tokens (the control host only: it holds the token key).

IA-5 (authenticator management), AC-2 (accounts: the tenant a token names). The token format, the
trust files and verification are `aifactory.trust.tokens`; this module signs with the private key in
`token-key/signing_key` and writes the signed revocation list nodes check every token against.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aifactory.chain import ChainWriter, canonical_json
from aifactory.durable import atomic_write
from aifactory.errors import Location, TokenRejected, UsageError
from aifactory.signing import generate_keypair, load_private_key, sign
from aifactory.trust.tokens import (
    REVOCATIONS_SCHEMA,
    TOKEN_NAMESPACE,
    TOKEN_PREFIX,
    TokenClaims,
    TrustFiles,
    b64url,
    dearmor,
    decode_unverified,
    iso_utc,
    token_signer,
)

MAX_LIFETIME = timedelta(days=366)


@dataclass(frozen=True)
class IssuedToken:
    token: str
    claims: TokenClaims


def ensure_site_key(trust: TrustFiles, *, site: str) -> None:
    """Create the site's token key on first use (0600, generated here, never copied in)."""
    if not trust.private_key.exists():
        generate_keypair(trust.key_dir, identity=token_signer(site), namespaces=TOKEN_NAMESPACE)
    if not trust.revocations.exists():
        _write_revocations(trust, site=site, entries=[])


def parse_expiry(text: str, *, now: datetime) -> datetime:
    """`30d`, `12h`, `45m`, an ISO date (expires at 00:00 UTC that day) or an ISO date-time."""
    match = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {"d": timedelta(days=amount), "h": timedelta(hours=amount), "m": timedelta(minutes=amount)}[
            unit
        ]
        when = now + delta
    else:
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
                day = date.fromisoformat(text.strip())
                when = datetime(day.year, day.month, day.day, tzinfo=UTC)
            else:
                when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
        except ValueError:
            raise UsageError(
                f"cannot read the expiry {text!r}",
                hint="give a duration such as 30d, 12h or 45m, or an ISO date such as 2027-01-31",
            ) from None
    if when <= now:
        raise UsageError(f"the expiry {text!r} is in the past", hint="tokens must expire in the future")
    if when - now > MAX_LIFETIME:
        raise UsageError(
            f"the expiry {text!r} is more than {MAX_LIFETIME.days} days away",
            hint="issue shorter-lived tokens and re-issue them (IA-5)",
        )
    return when


def issue_token(
    trust: TrustFiles,
    *,
    site: str,
    tenant: str,
    expires: datetime,
    now: datetime | None = None,
    passphrase: bytes | None = None,
) -> IssuedToken:
    ensure_site_key(trust, site=site)
    issued_at = now or datetime.now(UTC)
    claims = TokenClaims(
        id=secrets.token_hex(8),
        tenant=tenant,
        site=site,
        issued=int(issued_at.timestamp()),
        expires=int(expires.timestamp()),
    )
    payload = canonical_json(claims.as_dict()).encode()
    armored = sign(payload, load_private_key(trust.private_key, passphrase), TOKEN_NAMESPACE)
    token = f"{TOKEN_PREFIX}.{b64url(payload)}.{b64url(dearmor(armored))}"
    with ChainWriter(trust.issued_log) as log:
        log.append(
            {
                "event": "issued",
                "time": iso_utc(claims.issued),
                "token_id": claims.id,
                "tenant": tenant,
                "site": site,
                "expires": iso_utc(claims.expires),
            }
        )
    return IssuedToken(token, claims)


def token_id_of(text: str) -> str:
    """Accept a token id or a whole token (whose id is read without trusting it)."""
    text = text.strip()
    if re.fullmatch(r"[0-9a-f]{16}", text):
        return text
    try:
        return str(decode_unverified(text)[0]["id"])
    except (TokenRejected, KeyError):
        raise UsageError(f"{text[:24]!r} is neither a token id (16 hex digits) nor a token") from None


def revoke_token(
    trust: TrustFiles,
    *,
    site: str,
    token_id: str,
    reason: str | None = None,
    now: datetime | None = None,
    passphrase: bytes | None = None,
) -> int:
    """Add a token id to the signed revocation list; return how many ids the list holds."""
    if not trust.private_key.exists():
        raise UsageError(
            f"site {site!r} has no token key in {trust.key_dir}",
            hint="tokens are issued with `aifactory token issue` first",
        )
    when = iso_utc(int((now or datetime.now(UTC)).timestamp()))
    entries = {e["id"]: e for e in load_revocations(trust).get("revoked", [])}
    if token_id not in entries:
        entries[token_id] = {"id": token_id, "revoked_at": when, "reason": reason}
    _write_revocations(trust, site=site, entries=list(entries.values()), passphrase=passphrase)
    with ChainWriter(trust.issued_log) as log:
        log.append({"event": "revoked", "time": when, "token_id": token_id, "site": site, "reason": reason})
    return len(entries)


def resign_revocations(trust: TrustFiles, *, site: str, passphrase: bytes | None = None) -> None:
    """The revocation list, unchanged, signed again with the current token key (after a rotation
    switches keys: aifactory.trust.issuing.rotation)."""
    _write_revocations(
        trust, site=site, entries=list(load_revocations(trust).get("revoked", [])), passphrase=passphrase
    )


def load_revocations(trust: TrustFiles) -> dict[str, Any]:
    try:
        value = json.loads(trust.revocations.read_text())
    except FileNotFoundError:
        return {"schema": REVOCATIONS_SCHEMA, "revoked": []}
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot read the revocation list: {exc}", location=Location(file=str(trust.revocations))
        ) from None
    return value if isinstance(value, dict) else {"revoked": []}


def _write_revocations(
    trust: TrustFiles, *, site: str, entries: list[dict[str, Any]], passphrase: bytes | None = None
) -> None:
    document = {"schema": REVOCATIONS_SCHEMA, "site": site, "revoked": sorted(entries, key=lambda e: e["id"])}
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    signature = sign(data, load_private_key(trust.private_key, passphrase), TOKEN_NAMESPACE)
    # The signature goes first: a reader that sees the new list with the old signature fails
    # closed for an instant instead of accepting an unsigned list.
    atomic_write(trust.revocations_sig, signature.encode())
    atomic_write(trust.revocations, data)
