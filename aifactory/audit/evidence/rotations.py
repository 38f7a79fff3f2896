"""Cryptographic key management (SC-12) from the operator log's records of `aifactory rotate`
(docs/operations.md, "Rotating keys and certificates"): which rotations ran, by whom and when, their old
and new fingerprints and the phase each reached.

Two rules: no rotation was left between phases (a rotation stopped mid-rollout leaves hosts trusting
different keys; its overlap, where both are trusted on every host, is a phase an admin may hold); and
the bundle-signing key, token key and CA in use on the control host are the ones the latest rotation
of each put there. An ssh-host-keys rotation's record names each host's new host key (its
fingerprint), which the detail carries. With no rotation on record SC-12 is not assessed (never a pass).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from aifactory.audit.evidence.operations import operator_records
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, RuleResult
from aifactory.errors import AifactoryError
from aifactory.signing import fingerprint
from aifactory.state import SiteState
from aifactory.trust.certs import SiteCA
from aifactory.trust.issuing.certs import issuing_certificate
from aifactory.trust.tokens import TrustFiles

SOURCE = "rotations"
TITLE = "Rotations of the bundle key, the token key, the site CA, the server certificates and SSH host keys"
KEY_MANAGEMENT = "SC-12"
SETTLED = "rotation.settled"
IN_USE = "rotation.keys-in-use"
_RESTING = ("overlap", "finished")  # phases every host agrees on
_SWITCHED = ("switch-rollout", "overlap", "finish-rollout", "finished")  # the new key issues


def rotation_evidence(state: SiteState) -> Evidence:
    records = [r for r in operator_records(state) if r.get("command") == "rotate"]
    latest = _latest_per_rotation(records)
    if not latest:
        note = "no rotation on record (aifactory rotate SITE --what KIND)"
        nothing = RuleResult(SETTLED, "every rotation reached a settled phase", NOT_ASSESSED, SOURCE, note)
        return Evidence(SOURCE, TITLE, NOT_ASSESSED, note, {}, ((KEY_MANAGEMENT, nothing),))
    findings: list[Finding] = []
    for rotation, detail in latest.items():
        if detail.get("phase") not in _RESTING:
            findings.append(
                _finding(
                    SETTLED,
                    f"site/{state.site}/rotation/{rotation}",
                    f"the {detail.get('what')} rotation {rotation} stopped in phase {detail.get('phase')}: "
                    "hosts may trust different keys",
                    f"aifactory rotate SITE --what {detail.get('what')} (it resumes)",
                )
            )
    settled = FAIL if findings else PASS
    in_use, in_use_note, wrong = _keys_in_use(state, latest)
    findings += [
        _finding(IN_USE, f"site/{state.site}/{what}", message, f"aifactory rotate SITE --what {what}")
        for what, message in wrong
    ]
    rules = (
        (KEY_MANAGEMENT, RuleResult(SETTLED, "every rotation reached a settled phase", settled, SOURCE)),
        (
            KEY_MANAGEMENT,
            RuleResult(
                IN_USE,
                "the keys in use are the ones the latest rotations installed",
                in_use,
                SOURCE,
                in_use_note,
            ),
        ),
    )
    detail = {"rotations": [_brief(rotation, d) for rotation, d in latest.items()]}
    summary = f"{len(latest)} rotation(s) on record; {in_use_note}"
    return Evidence(SOURCE, TITLE, FAIL if findings else PASS, summary, detail, rules, tuple(findings))


def _latest_per_rotation(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each rotation's last recorded state (its detail), oldest rotation first."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        detail = record.get("detail")
        if isinstance(detail, dict) and isinstance(detail.get("rotation"), str):
            latest.pop(detail["rotation"], None)
            latest[detail["rotation"]] = {**detail, "time": record.get("time"), "user": record.get("user")}
    return latest


def _keys_in_use(
    state: SiteState, latest: dict[str, dict[str, Any]]
) -> tuple[str, str, list[tuple[str, str]]]:
    trust = TrustFiles(state.path("runtime"))
    current = {
        "bundle-key": _public_key(state.path("bundle-key", "signing_key.pub")),
        "token-key": _public_key(trust.key_dir / "signing_key.pub"),
        "ca": _ca(trust),
    }
    wrong: list[tuple[str, str]] = []
    checked: list[str] = []
    for what, found in current.items():
        last = next((d for d in reversed(latest.values()) if d.get("what") == what), None)
        if last is None or last.get("phase") not in _SWITCHED:
            continue
        checked.append(what)
        if found != last.get("new"):
            wrong.append(
                (
                    what,
                    f"the {what} in use is {found}, not {last.get('new')} that rotation "
                    f"{last.get('rotation')} installed",
                )
            )
    if not checked:
        return NOT_ASSESSED, "no bundle-key, token-key or ca rotation has switched keys yet", wrong
    status = FAIL if wrong else PASS
    return status, f"checked the {' and the '.join(checked)} in use against the latest rotation", wrong


def _public_key(path: Path) -> str | None:
    try:
        public = load_ssh_public_key(path.read_bytes())
    except (OSError, ValueError):
        return None
    return fingerprint(public) if isinstance(public, Ed25519PublicKey) else None


def _ca(trust: TrustFiles) -> str | None:
    try:
        return issuing_certificate(SiteCA.of(trust)).fingerprint(hashes.SHA256()).hex()
    except (OSError, ValueError, AifactoryError):
        return None


def _brief(rotation: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {
        "rotation": rotation,
        "what": detail.get("what"),
        "phase": detail.get("phase"),
        "old": detail.get("old"),
        "new": detail.get("new"),
        "started": detail.get("started"),
        "finished": detail.get("finished"),
        "last_run": detail.get("time"),
        "by": detail.get("user"),
        # ssh-host-keys: each host's new host key fingerprint
        **({"host_keys": detail["host_keys"]} if isinstance(detail.get("host_keys"), dict) else {}),
    }


def _finding(rule: str, resource: str, message: str, remediation: str) -> Finding:
    return Finding(
        rule=rule,
        title="a rotation stopped midway" if rule == SETTLED else "a key in use is not the one on record",
        controls=(KEY_MANAGEMENT,),
        severity="moderate",
        resource=resource,
        message=message,
        remediation=remediation,
        status=FAIL,
        source=SOURCE,
    )
