"""`aifactory audit verify DIR`: is this the report as signed, and do the logs it cites still agree?

1. SHA256SUMS.sig is a valid SSHSIG (namespace aifactory-audit) over SHA256SUMS by a trusted key
   (`--trust FILE`), and the signature file is in its canonical form. Without a trust file the signer
   is not checked, and that is a failure unless the caller asks for it (`trust_check=False`,
   `--no-trust-check`): then the allowed_signers beside the report must name exactly the signer
   recorded in report.json, which only proves that the folder is self-consistent;
2. every report file is listed and matches its digest, no listed file is missing, and nothing else
   is in the folder (an unlisted `index.html` with a script in it is not part of what was signed);
3. every log report.json cites still verifies, and still holds the head the report saw (the log may
   have grown since; it may not have been rewritten or cut). A log that is not on this machine is
   listed as not checked, and fails the check with `require_logs`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifactory import signing
from aifactory.audit.evidence.logs import verify_any_log
from aifactory.audit.sign import (
    ALLOWED_SIGNERS,
    MANIFEST,
    NAMESPACE,
    SIGNATURE,
    allowed_signers_line,
    file_digest,
    parse_manifest,
)
from aifactory.chain import iter_records
from aifactory.errors import AifactoryError, AuditError

REQUIRED = ("report.html", "report.json", "assessment-results.json")
# Other signed report kinds, named by report.json's "kind" (the operations report: aifactory.telemetry).
REQUIRED_BY_KIND = {"ops": ("report.html", "report.json")}
SIGNING_FILES = (MANIFEST, SIGNATURE, ALLOWED_SIGNERS)  # in the folder, not listed in the manifest
NO_TRUST = (
    "the signer was not checked: no --trust was given, and the allowed_signers beside the report "
    "trusts whoever signed it; pass --trust with an allowed_signers you got separately, or "
    "--no-trust-check to check only that the folder is self-consistent"
)


@dataclass
class VerifyResult:
    folder: str
    trust: str
    signer: str = ""
    files: list[str] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "ok": self.ok,
            "trust": self.trust,
            "signer": self.signer,
            "files": self.files,
            "logs": self.logs,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read {path}: {exc.strerror}", hint="is this a report folder?") from None


def _canonical_armor(armored: str) -> str:
    """The armor `signing.sign` writes for the same signature (rejects re-wrapped or padded files)."""
    text = armored.strip()
    body = "".join(text[len(signing.BEGIN) : -len(signing.END)].split())
    encoded = base64.b64encode(base64.b64decode(body)).decode()
    lines = [encoded[i : i + 70] for i in range(0, len(encoded), 70)]
    return "\n".join([signing.BEGIN, *lines, signing.END]) + "\n"


def _check_signature(folder: Path, manifest: bytes, trust: Path | None, result: VerifyResult) -> None:
    armored = _read(folder / SIGNATURE).decode("utf-8", errors="replace")
    trust_file = trust or folder / ALLOWED_SIGNERS
    try:
        result.signer = signing.verify(
            manifest,
            armored,
            allowed_signers=trust_file,
            namespace=NAMESPACE,
            principal=_named_signer(folder),
        )
        if armored != _canonical_armor(armored):
            result.problems.append(f"{SIGNATURE} was altered (it is not in the form it was written in)")
    except (signing.SignatureError, ValueError) as exc:
        result.problems.append(f"{SIGNATURE}: {getattr(exc, 'message', exc)}")
        return
    if trust is None:
        result.warnings.append(
            "trusted the allowed_signers shipped with the report; pass --trust with a "
            "trust file you got separately to know who signed it"
        )
    _check_beside_trust(folder, armored, result)


def _named_signer(folder: Path) -> str | None:
    """The identity report.json says signed it: the principal the trust file must grant the key to
    (`ssh-keygen -Y verify -I <identity>`). None when the report does not say (then the trust file's
    own name for the key is reported, and the beside-the-report check fails on the missing name)."""
    try:
        identity = json.loads((folder / "report.json").read_bytes())["signer"]["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return identity if isinstance(identity, str) and identity else None


def _check_beside_trust(folder: Path, armored: str, result: VerifyResult) -> None:
    """The allowed_signers beside the report must be exactly the one written for the signer report.json
    names (with --trust too: every file in the folder is as it was written)."""
    try:
        report = json.loads(_read(folder / "report.json"))
        signer = report["signer"]
    except (ValueError, KeyError, TypeError):
        result.problems.append("report.json does not name its signer")
        return
    public = signing.parse_signature(armored).public_key
    if signer.get("fingerprint") != signing.fingerprint(public):
        result.problems.append("the signing key is not the one report.json names")
    expected = allowed_signers_line(str(signer.get("identity")), signing.public_key_line(public))
    if _read(folder / ALLOWED_SIGNERS).decode(errors="replace") != expected:
        result.problems.append(
            f"{ALLOWED_SIGNERS} was altered (it is not the one written for {signer.get('identity')})"
        )


def _check_files(folder: Path, manifest: bytes, result: VerifyResult) -> None:
    try:
        entries = parse_manifest(manifest.decode("utf-8"), where=folder / MANIFEST)
    except (AuditError, UnicodeDecodeError) as exc:
        result.problems.append(f"{MANIFEST}: {getattr(exc, 'message', exc)}")
        return
    listed = {name for _, name in entries}
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name not in listed and entry.name not in SIGNING_FILES:
            result.problems.append(f"{entry.name} is in the report folder but not listed in {MANIFEST}")
    for name in _required(folder):
        if name not in listed:
            result.problems.append(f"{MANIFEST} does not list {name}")
    for digest, name in entries:
        path = folder / name
        if not path.is_file():
            result.problems.append(f"{name} is missing")
        elif file_digest(path) != digest:
            result.problems.append(f"{name} was changed after it was signed (its SHA-256 does not match)")
        else:
            result.files.append(name)


def _required(folder: Path) -> tuple[str, ...]:
    """The files a report of its kind must list: the audit report's unless report.json names another."""
    try:
        kind = json.loads((folder / "report.json").read_bytes()).get("kind")
    except (OSError, ValueError, AttributeError):
        return REQUIRED
    return REQUIRED_BY_KIND.get(kind, REQUIRED) if isinstance(kind, str) else REQUIRED


def _record_hash_at(path: Path, seq: int) -> str | None:
    for _number, record, _raw in iter_records(path):
        if record is not None and record.get("seq") == seq:
            return str(record.get("hash"))
    return None


def _check_logs(folder: Path, result: VerifyResult, require_logs: bool) -> None:
    try:
        logs = json.loads(_read(folder / "report.json")).get("logs") or []
    except ValueError:
        result.problems.append("report.json is not JSON")
        return
    for log in logs:
        path = Path(str(log.get("path")))
        seq = int((log.get("head") or {}).get("seq", -1))
        expected = str((log.get("head") or {}).get("hash", ""))
        entry: dict[str, Any] = {"path": str(path), "kind": log.get("kind"), "head_seq": seq}
        if not path.exists():
            entry["status"] = "not checked: not on this machine"
            found_in = result.problems if require_logs else result.warnings
            found_in.append(f"{path}: log not found, not checked")
        else:
            check = verify_any_log(path)
            problems = list(check.chain.problems)
            if seq >= 0 and _record_hash_at(path, seq) != expected:
                problems.append(
                    f"the record at seq {seq} is not the one the report saw: the log was "
                    "rewritten or cut after the report"
                )
            entry["status"] = "ok" if not problems else "broken"
            entry["records"] = check.chain.records
            result.problems += [f"{path}: {p}" for p in problems]
        result.logs.append(entry)


def verify_report(
    folder: Path, *, trust: Path | None = None, require_logs: bool = False, trust_check: bool = True
) -> VerifyResult:
    trust_text = (
        str(trust) if trust else f"{folder / ALLOWED_SIGNERS} (beside the report: signer not checked)"
    )
    result = VerifyResult(str(folder), trust_text)
    if trust is None and trust_check:
        result.problems.append(NO_TRUST)
    try:
        manifest = _read(folder / MANIFEST)
        _check_signature(folder, manifest, trust, result)
        _check_files(folder, manifest, result)
        if "report.json" in result.files:
            _check_logs(folder, result, require_logs)
    except AifactoryError as error:
        result.problems.append(error.message)
    return result
