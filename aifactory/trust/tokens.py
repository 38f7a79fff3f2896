"""Site-signed bearer tokens and the signed revocation list, as nodes verify them (IA-2, IA-5, AC-2).

A token says which tenant its bearer acts for, at which site, until when. The runtime never trusts
a tenant name that a request or job asserts itself: the tenant comes only from a token that
verifies against the site's public key and is neither expired nor revoked.

Compact format (one line, URL-safe, no padding):

    aft1.<base64url(payload)>.<base64url(SSHSIG blob)>

`payload` is the canonical JSON of {"v": 1, "id", "tenant", "site", "issued", "expires"} (times in
whole seconds since the epoch, UTC). The signature is an OpenSSH SSHSIG Ed25519 signature over the
payload bytes in namespace `aifactory-token`, so an auditor can check a token with the stock tool:
re-armor the blob between BEGIN/END SSH SIGNATURE lines and run `ssh-keygen -Y verify`.

Files, in the site's runtime folder (`SiteState.for_site(site).subdir("runtime")`, 0700):

    token-key/signing_key       the site's token key (0600; on the admin's machine only)
    token-key/allowed_signers   its public key: what nodes verify tokens against
    revoked-tokens.json(.sig)   the revocation list, signed by the same key; nodes reload it on change
    issued-tokens.jsonl         hash-chained record of issued and revoked token ids (never the tokens)

This module is the verifying side (nodes, and the control host before `sbatch`): the format, the
trust files and `TokenVerifier`. Issuing and revoking tokens, which need the site's private key,
live in `aifactory.trust.issuing.tokens` (the control host only).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifactory.errors import TokenRejected
from aifactory.signing import BEGIN, END, SignatureError, verify, verify_signer

TOKEN_NAMESPACE = "aifactory-token"
TOKEN_PREFIX = "aft1"
REVOCATIONS_SCHEMA = "aifactory.revocations/v1"


@dataclass(frozen=True)
class TokenClaims:
    id: str
    tenant: str
    site: str
    issued: int
    expires: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "v": 1,
            "id": self.id,
            "tenant": self.tenant,
            "site": self.site,
            "issued": self.issued,
            "expires": self.expires,
        }


@dataclass(frozen=True)
class TrustFiles:
    """Where the runtime folder keeps the token key, its public half and the revocation list."""

    root: Path

    @property
    def key_dir(self) -> Path:
        return self.root / "token-key"

    @property
    def private_key(self) -> Path:
        return self.key_dir / "signing_key"

    @property
    def allowed_signers(self) -> Path:
        return self.key_dir / "allowed_signers"

    @property
    def revocations(self) -> Path:
        return self.root / "revoked-tokens.json"

    @property
    def revocations_sig(self) -> Path:
        return self.root / "revoked-tokens.json.sig"

    @property
    def issued_log(self) -> Path:
        return self.root / "issued-tokens.jsonl"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def armor(blob: bytes) -> str:
    encoded = base64.b64encode(blob).decode()
    return "\n".join([BEGIN, *(encoded[i : i + 70] for i in range(0, len(encoded), 70)), END]) + "\n"


def dearmor(armored: str) -> bytes:
    return base64.b64decode("".join(armored.strip()[len(BEGIN) : -len(END)].split()))


def iso_utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def token_signer(site: str) -> str:
    """The identity a site's token key signs as: `-I` for `ssh-keygen -Y verify`."""
    return f"{site}-tokens"


def decode_unverified(token: str) -> tuple[dict[str, Any], bytes, bytes]:
    """(claims, payload bytes, signature blob) of a token, read without checking anything."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise TokenRejected("token-malformed", "the token is not an aifactory token (aft1.PAYLOAD.SIGNATURE)")
    try:
        payload = unb64url(parts[1])
        blob = unb64url(parts[2])
        claims = json.loads(payload)
    except ValueError:
        raise TokenRejected("token-malformed", "the token's payload cannot be decoded") from None
    if not isinstance(claims, dict):
        raise TokenRejected("token-malformed", "the token's payload is not an object")
    return claims, payload, blob


def _claims(raw: dict[str, Any]) -> TokenClaims:
    try:
        claims = TokenClaims(
            id=str(raw["id"]),
            tenant=str(raw["tenant"]),
            site=str(raw["site"]),
            issued=int(raw["issued"]),
            expires=int(raw["expires"]),
        )
    except (KeyError, TypeError, ValueError):
        raise TokenRejected("token-malformed", "the token's payload lacks a field") from None
    if raw.get("v") != 1:
        raise TokenRejected("token-malformed", f"unsupported token version {raw.get('v')!r}")
    return claims


def file_version(path: Path) -> tuple[int, int] | None:
    """(mtime, size) of a file, None when it is missing: what tells a reader to load it again."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return (status.st_mtime_ns, status.st_size)


class TokenVerifier:
    """Verifies tokens for one site; thread-safe.

    Signature checks are cached per token string (bounded) and dropped when the trust file changes.
    The revocation list is re-read whenever it or its signature changes on disk; a list that is
    missing, unsigned or signed by another key makes every token fail (fail closed).
    """

    def __init__(
        self, trust: TrustFiles, *, site: str, cache_size: int = 4096, recheck_interval: float = 0.0
    ) -> None:
        self.trust = trust
        self.site = site
        self.signer = token_signer(site)  # the principal the trust file must grant (ssh-keygen -I)
        self.recheck_interval = recheck_interval  # seconds between looks at the files (0: every call)
        self._checked_at = float("-inf")
        self._versions: tuple[Any, ...] = ()
        self._lock = threading.Lock()
        # token -> (claims, the end of the trust line's validity window, None when open-ended)
        self._cache: OrderedDict[str, tuple[TokenClaims, int | None]] = OrderedDict()
        self._cache_size = cache_size
        self._trust_version: tuple[int, int] | None = None
        self._revocations_version: tuple[Any, Any] | None = None
        self._revoked: frozenset[str] = frozenset()
        self._revocation_problem: str | None = "not loaded"

    def verify(self, token: str | None, *, now: float | None = None) -> TokenClaims:
        if not token:
            raise TokenRejected("token-missing", "no token was presented")
        claims = self._verified_claims(token)
        moment = time.time() if now is None else now
        if claims.site != self.site:
            raise TokenRejected("token-wrong-site", f"the token was issued for site {claims.site!r}")
        if moment >= claims.expires:
            raise TokenRejected("token-expired", f"the token expired at {iso_utc(claims.expires)}")
        self.check_not_revoked(claims.id, reason="token-revoked")
        return claims

    def check_not_revoked(self, entry_id: str, *, reason: str) -> None:
        """Raise TokenRejected(reason) when the signed revocation list names `entry_id` (a token id or
        a certificate's `cert:<serial>`), or `revocation-list-invalid` when the list does not verify."""
        revoked, problem = self._revocation_state()
        if problem:
            raise TokenRejected("revocation-list-invalid", problem)
        if entry_id in revoked:
            raise TokenRejected(reason, f"{entry_id} is revoked")

    def _file_versions(self) -> tuple[Any, ...]:
        """(trust file, revocation list, its signature) versions, looked at most every recheck_interval."""
        now = time.monotonic()
        if now - self._checked_at >= self.recheck_interval:
            self._versions = (
                file_version(self.trust.allowed_signers),
                file_version(self.trust.revocations),
                file_version(self.trust.revocations_sig),
            )
            self._checked_at = now
        return self._versions

    def _verified_claims(self, token: str) -> TokenClaims:
        trust_version = self._file_versions()[0]
        with self._lock:
            if trust_version != self._trust_version:
                self._cache.clear()
                self._trust_version = trust_version
            cached = self._cache.get(token)
            if cached is not None and (cached[1] is None or time.time() <= cached[1]):
                self._cache.move_to_end(token)
                return cached[0]
        raw, payload, blob = decode_unverified(token)
        claims = _claims(raw)
        if trust_version is None:
            raise TokenRejected("token-untrusted", f"no token trust file at {self.trust.allowed_signers}")
        try:
            granted = verify_signer(
                hashlib.sha512(payload).digest(),
                armor(blob),
                allowed_signers=self.trust.allowed_signers,
                namespace=TOKEN_NAMESPACE,
                principal=token_signer(claims.site),  # the site check after this refuses other sites
            )
        except SignatureError as exc:
            raise TokenRejected(
                "token-bad-signature", f"the token's signature does not verify: {exc.message}"
            ) from None
        with self._lock:
            self._cache[token] = (claims, granted.valid_before)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return claims

    def _revocation_state(self) -> tuple[frozenset[str], str | None]:
        version = self._file_versions()
        with self._lock:
            if version == self._revocations_version:
                return self._revoked, self._revocation_problem
            revoked, problem = self._load_revocations()
            self._revocations_version = version
            self._revoked, self._revocation_problem = revoked, problem
            return revoked, problem

    def _load_revocations(self) -> tuple[frozenset[str], str | None]:
        try:
            data = self.trust.revocations.read_bytes()
            signature = self.trust.revocations_sig.read_text()
        except OSError as exc:
            return frozenset(), f"the revocation list cannot be read: {exc.strerror} ({exc.filename})"
        try:
            verify(
                data,
                signature,
                allowed_signers=self.trust.allowed_signers,
                namespace=TOKEN_NAMESPACE,
                principal=self.signer,
            )
            document = json.loads(data)
            return frozenset(str(entry["id"]) for entry in document["revoked"]), None
        except SignatureError as exc:
            return frozenset(), f"the revocation list's signature does not verify: {exc.message}"
        except (ValueError, KeyError, TypeError) as exc:
            return frozenset(), f"the revocation list is malformed: {exc}"
