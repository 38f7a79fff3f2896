"""A person's signed sign-off of one challenger (human oversight, EU AI Act Art. 14; docs/loop.md).

    {"format": "aifactory.sign-off/v1", "site", "model", "challenger": "sha256:<version>", "by"}

signed with the person's SSH key (SSHSIG, namespace `aifactory-sign-off`: `ssh-keygen -Y sign -n
aifactory-sign-off` makes the same signature) over the document's RFC 8785 canonical JSON. Who signed
is what the site's sign-off trust file (an OpenSSH allowed_signers file, by default
`<state>/loop/allowed_signers`) names for the key, never what the signer claims; the promotion policy
then checks that name against the spec's `sign_off.by`, and that the sign-off names this very
challenger. A signature that does not verify is kept as given and judged `sign-off-unverified`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.allowed_signers import AllowedSigners
from aifactory.chain import canonical_bytes
from aifactory.durable import atomic_write
from aifactory.errors import LoopError, SignatureError
from aifactory.loop.promotion import SignOff
from aifactory.signing import load_private_key, sign, verify

SIGN_OFF_FORMAT = "aifactory.sign-off/v1"
NAMESPACE = "aifactory-sign-off"
MAX_SIGN_OFF_BYTES = 64 << 10


@dataclass(frozen=True)
class SignedSignOff:
    document: dict[str, Any]
    signature: str  # armored SSHSIG

    def as_dict(self) -> dict[str, Any]:
        return {"document": self.document, "signature": self.signature}


def make_sign_off(
    *, site: str, model: str, challenger: str, key: Path, allowed_signers: Path
) -> SignedSignOff:
    """Sign off `challenger` with the SSH key at `key`; the signer is who the trust file names for it
    (LoopError when it names nobody: a sign-off nobody can verify is not made)."""
    private = load_private_key(key)
    signers = AllowedSigners.read(allowed_signers)
    try:
        who = signers.find_principal(private.public_key(), namespace=NAMESPACE).principal
    except SignatureError as exc:
        raise LoopError(
            f"the key {key} is not one the sign-off trust file {allowed_signers} names: {exc.message}",
            code="sign-off-not-allowed",
            hint=f'the site adds the signer\'s line (`NAME namespaces="{NAMESPACE}" ssh-ed25519 ...`)',
        ) from None
    document = {"format": SIGN_OFF_FORMAT, "site": site, "model": model, "challenger": challenger, "by": who}
    return SignedSignOff(document, sign(canonical_bytes(document), private, NAMESPACE))


def write_sign_off(path: Path, signed: SignedSignOff) -> None:
    atomic_write(path, canonical_bytes(signed.as_dict()) + b"\n", mode=0o600)


def read_sign_off(path: Path) -> SignedSignOff | None:
    """The sign-off stored at `path`, or None when there is none (a malformed file is LoopError)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SIGN_OFF_BYTES + 1)
    except FileNotFoundError:
        return None
    try:
        stored = json.loads(raw)
        document, signature = stored["document"], stored["signature"]
        if not isinstance(document, dict) or not isinstance(signature, str) or len(raw) > MAX_SIGN_OFF_BYTES:
            raise ValueError("not a sign-off")
    except (ValueError, KeyError, TypeError) as exc:
        raise LoopError(f"{path} is not a sign-off: {exc}", code="sign-off-invalid") from None
    return SignedSignOff(document, signature)


def verified_sign_off(signed: SignedSignOff, *, site: str, model: str, allowed_signers: Path) -> SignOff:
    """What the promotion policy judges: who, for which challenger, and whether the signature verified
    for that signer under the trust file (a sign-off for another site or model does not verify)."""
    document = signed.document
    by, challenger = str(document.get("by", "")), str(document.get("challenger", ""))
    verified = document.get("format") == SIGN_OFF_FORMAT and (
        document.get("site"),
        document.get("model"),
    ) == (
        site,
        model,
    )
    if verified:
        try:
            verify(
                canonical_bytes(document),
                signed.signature,
                allowed_signers=allowed_signers,
                namespace=NAMESPACE,
                principal=by,
            )
        except SignatureError:
            verified = False
    return SignOff(by=by, challenger=challenger, signature_verified=verified)
