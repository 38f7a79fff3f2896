"""System backup (CP-9) from the operator log's records of `aifactory backup` and `aifactory restore`
(docs/operations.md): the backups made (when, by whom, how many files, the key that signed them), the
restores, and how many changing commands the log holds since the latest backup (what it lacks).

Two rules: the latest backup attempt wrote its file; and the latest backup written, when it is still
on this host, is the file the log recorded (SHA-256) and its signature verifies against the site's
backup key. A backup moved off the control host, as it should be, cannot be checked here: that rule is
then not assessed and says so. With no backup on record CP-9 is not assessed (never a pass).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aifactory.audit.evidence.operations import operator_records
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, RuleResult
from aifactory.backup import verify_backup
from aifactory.backup.operations import ALLOWED_SIGNERS, KEY_FOLDER
from aifactory.digests import sha256_file
from aifactory.errors import AifactoryError
from aifactory.state import SiteState

SOURCE = "backups"
TITLE = "Backups of the control host's state"
BACKUP = "CP-9"  # system backup
WRITTEN = "backup.latest-written"
INTACT = "backup.latest-verifies"
_COMMANDS = ("backup", "restore")


def backup_evidence(state: SiteState) -> Evidence:
    records = operator_records(state)
    backups = [r for r in records if r.get("command") == "backup"]
    if not backups:
        note = "no backup on record (aifactory backup SITE -o FILE)"
        nothing = RuleResult(WRITTEN, "the latest backup was written", NOT_ASSESSED, SOURCE, note)
        return Evidence(SOURCE, TITLE, NOT_ASSESSED, note, {}, ((BACKUP, nothing),))
    written = [r for r in backups if r.get("result") == "written"]
    latest = backups[-1]
    findings: list[Finding] = []
    wrote = PASS if latest.get("result") == "written" else FAIL
    if wrote == FAIL:
        findings.append(
            _finding(
                WRITTEN,
                f"site/{state.site}/backup",
                f"the latest backup ({latest.get('time')}, {latest.get('result')}) wrote no file",
            )
        )
    intact, intact_note = _intact(state, written[-1] if written else None)
    if intact == FAIL:
        findings.append(_finding(INTACT, str(_detail(written[-1]).get("file")), intact_note))
    since = _changes_since(records, written[-1] if written else None)
    rules = (
        (BACKUP, RuleResult(WRITTEN, "the latest backup was written", wrote, SOURCE)),
        (
            BACKUP,
            RuleResult(
                INTACT, "the latest backup is the one recorded and verifies", intact, SOURCE, intact_note
            ),
        ),
    )
    detail: dict[str, Any] = {
        "backups": len(backups),
        "written": len(written),
        "latest": _brief(written[-1]) if written else None,
        "latest_check": intact_note,
        "changes_since_latest": since,
        "restores": [_brief(r) for r in records if r.get("command") == "restore"][-5:],
    }
    status = FAIL if findings else PASS
    summary = (
        f"{len(written)} backup(s) written of {len(backups)} attempted, the latest at "
        f"{written[-1].get('time') if written else 'none'}; {since} change(s) recorded since; {intact_note}"
    )
    return Evidence(SOURCE, TITLE, status, summary, detail, rules, tuple(findings))


def _detail(record: dict[str, Any]) -> dict[str, Any]:
    detail = record.get("detail")
    return detail if isinstance(detail, dict) else {}


def _intact(state: SiteState, record: dict[str, Any] | None) -> tuple[str, str]:
    if record is None:
        return NOT_ASSESSED, "no backup was written"
    detail = _detail(record)
    file = Path(str(detail.get("file", "")))
    if not file.is_file():
        return (
            NOT_ASSESSED,
            f"the latest backup is no longer at {file} (moved off this host): not checked here",
        )
    if sha256_file(file) != detail.get("sha256"):
        return FAIL, f"{file} is not the backup the operator log recorded at {record.get('time')}"
    trust = state.path(KEY_FOLDER, ALLOWED_SIGNERS)
    try:
        verify_backup(file, trust=trust)
    except AifactoryError as error:
        return FAIL, f"{file} does not verify with the site's backup key: {error.message}"
    return PASS, f"{file} ({record.get('time')}) is the one recorded and verifies with the site's backup key"


def _changes_since(records: list[dict[str, Any]], latest: dict[str, Any] | None) -> int:
    """Changing commands the log records after the latest backup written (all of them without one)."""
    start = 0
    if latest is not None:
        start = next(i for i, r in enumerate(records) if r is latest) + 1
    return sum(1 for r in records[start:] if r.get("command") not in _COMMANDS)


def _brief(record: dict[str, Any]) -> dict[str, Any]:
    detail = _detail(record)
    return {
        "time": record.get("time"),
        "user": record.get("user"),
        "result": record.get("result"),
        "file": detail.get("file"),
        "files": detail.get("files"),
        "signer": detail.get("signer"),
    }


def _finding(rule: str, resource: str, message: str) -> Finding:
    return Finding(
        rule=rule,
        title="the latest backup failed" if rule == WRITTEN else "the latest backup does not verify",
        controls=(BACKUP,),
        severity="moderate",
        resource=resource,
        message=message,
        remediation="aifactory backup SITE -o FILE, onto media that leaves the control host",
        status=FAIL,
        source=SOURCE,
    )
