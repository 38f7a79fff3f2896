"""Configuration change control (CM-3) and the baseline per version (CM-2) from the operator log's
upgrade, rollback, resize and replace records (aifactory.lifecycle.records) and the deploy record of
each host.

CM-3: every change (one run id) has its outcome on record (finished, reverted or aborted), and every
rollback cites an activation record that is still the file it cited, authorizes exactly that site,
version and content, was signed (by a key the bundle trust file grants, when the audit is given it)
no more than MAX_AGE before the rollback started. CM-2: every deployed host runs the version the site
has current, so the baseline is one version; the detail lists each version with the hosts on it.

With no upgrade or rollback on record the section is not assessed (never a pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aifactory import signing
from aifactory.audit.evidence.operations import operator_records
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, RuleResult
from aifactory.bundle.manifest import BundleVersion
from aifactory.digests import sha256_file
from aifactory.errors import ActivationError, SignatureError
from aifactory.lifecycle.activation import MAX_AGE, NAMESPACE, ActivationRecord, signature_path
from aifactory.lifecycle.records import KINDS, OUTCOMES, STARTED
from aifactory.lifecycle.versions import VersionHistory, version_history
from aifactory.state import SiteState

SOURCE = "changes"
TITLE = "Upgrades, rollbacks and the version each host runs"
CHANGE, BASELINE = "CM-3", "CM-2"
OUTCOME = ("change.outcome-recorded", "every upgrade and rollback has its outcome on record")
AUTHORIZED = ("change.rollback-authorized", "every rollback cites a valid activation record")
ONE_VERSION = ("baseline.hosts-on-current", "every deployed host runs the site's current version")


@dataclass(frozen=True)
class ChangeRun:
    """One upgrade or rollback: its records in order."""

    run: str
    kind: str
    records: tuple[dict[str, Any], ...]

    @property
    def outcome(self) -> str | None:
        last = self.records[-1].get("result")
        return str(last) if last in OUTCOMES else None

    def brief(self) -> dict[str, Any]:
        first, last = self.records[0], self.records[-1]
        detail = _detail(first)
        return {
            "run": self.run,
            "kind": self.kind,
            "from": _mapping(detail.get("from")).get("version"),
            "to": _mapping(detail.get("to")).get("version"),
            "who": first.get("user"),
            "started": first.get("time"),
            "ended": last.get("time") if self.outcome else None,
            "outcome": self.outcome,
            "activation": _mapping(detail.get("activation")).get("file"),
            **_reboot(detail),
        }


def _reboot(detail: dict[str, Any]) -> dict[str, str]:
    """A change that needed a reboot says which packages, and who restarted the hosts (absent when
    none was needed: older evidence keeps its shape)."""
    reboot = _mapping(detail.get("reboot"))
    if not reboot.get("needed"):
        return {}
    packages = ", ".join(
        f"{p.get('name')} {p.get('from') or '(none)'} -> {p.get('to') or '(none)'}"
        for p in reboot.get("packages", [])
        if isinstance(p, dict)
    )
    how = (
        "restarted through the BMCs, batch by batch"
        if reboot.get("restart")
        else "not restarted (--no-reboot): it takes effect when the admin restarts the hosts"
    )
    return {"reboot": f"{packages}; {how}"}


def change_evidence(state: SiteState, *, trust: Path | None = None) -> Evidence:
    runs = change_runs(operator_records(state))
    history = version_history(state)
    if not runs:
        note = "no upgrade or rollback on record (aifactory upgrade, aifactory rollback)"
        rules = tuple(
            (control, RuleResult(*rule, NOT_ASSESSED, SOURCE, note))
            for control, rule in ((CHANGE, OUTCOME), (CHANGE, AUTHORIZED), (BASELINE, ONE_VERSION))
        )
        return Evidence(SOURCE, TITLE, NOT_ASSESSED, note, _versions(history), rules)
    findings = [*_open_changes(state, runs), *_rollback_findings(state, runs, trust)]
    baseline_status, baseline_note, baseline_findings = _baseline(state, history)
    findings += baseline_findings
    rollbacks = [r for r in runs if r.kind == "rollback"]
    rules = (
        (CHANGE, RuleResult(*OUTCOME, _status(findings, OUTCOME[0]), SOURCE)),
        (
            CHANGE,
            RuleResult(
                *AUTHORIZED,
                _status(findings, AUTHORIZED[0]) if rollbacks else NOT_ASSESSED,
                SOURCE,
                "" if rollbacks else "no rollback on record",
            ),
        ),
        (BASELINE, RuleResult(*ONE_VERSION, baseline_status, SOURCE, baseline_note)),
    )
    ended = sum(1 for r in runs if r.outcome)
    summary = (
        f"{len(runs)} change(s) on record ({len(rollbacks)} rollback(s)), {ended} with an outcome; "
        f"{baseline_note}"
    )
    detail = {"changes": [r.brief() for r in runs]} | _versions(history)
    status = FAIL if findings else PASS
    return Evidence(SOURCE, TITLE, status, summary, detail, rules, tuple(findings))


def change_runs(records: list[dict[str, Any]]) -> list[ChangeRun]:
    """The operator log's upgrade and rollback records grouped by run id, in the order runs began."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        run = _detail(record).get("run")
        if record.get("command") in KINDS and isinstance(run, str):
            grouped.setdefault((str(record["command"]), run), []).append(record)
    return [ChangeRun(run, kind, tuple(found)) for (kind, run), found in grouped.items()]


def _open_changes(state: SiteState, runs: list[ChangeRun]) -> list[Finding]:
    return [
        _finding(
            OUTCOME,
            f"site/{state.site}/{run.kind}/{run.run}",
            f"the {run.kind} {run.run} begun {run.records[0].get('time')} has no outcome on record "
            f"(last: {run.records[-1].get('result')})",
            f"re-run `aifactory {run.kind}` to resume it"
            + ("" if run.kind in ("resize", "replace") else ", or `--abort` it"),
        )
        for run in runs
        if run.outcome is None
    ]


def _rollback_findings(state: SiteState, runs: list[ChangeRun], trust: Path | None) -> list[Finding]:
    findings = []
    for run in runs:
        if run.kind != "rollback":
            continue
        problem = _activation_problem(state, run, trust)
        if problem:
            findings.append(
                _finding(
                    AUTHORIZED,
                    f"site/{state.site}/rollback/{run.run}",
                    f"rollback {run.run}: {problem}",
                    "go back only with `aifactory activation authorize` (docs/operations.md)",
                )
            )
    return findings


def _activation_problem(state: SiteState, run: ChangeRun, trust: Path | None) -> str | None:
    started = next((r for r in run.records if r.get("result") == STARTED), None)
    if started is None:
        return "its start is not on record"
    detail = _detail(started)
    cited = _mapping(detail.get("activation"))
    path = Path(str(cited.get("file", "")))
    if not cited or not path.is_file():
        return "it cites no activation record that is still in the state folder"
    if sha256_file(path) != cited.get("sha256"):
        return f"{path} is not the activation record the log cited"
    data = path.read_bytes()
    try:
        record = ActivationRecord.parse(data, source=str(path))
    except ActivationError as error:
        return error.message
    target = _mapping(detail.get("to"))
    if (record.site, record.version, record.digest) != (
        state.site,
        target.get("version"),
        target.get("digest"),
    ):
        return (
            f"{path} authorizes {record.site} {record.version} ({record.digest}), not "
            f"{state.site} {target.get('version')} ({target.get('digest')})"
        )
    begun = datetime.fromisoformat(str(started.get("time")).replace("Z", "+00:00"))
    if not record.signed_at <= begun <= record.signed_at + MAX_AGE:
        return f"{path} was signed at {record.time}, not within {MAX_AGE} before the rollback began"
    if trust is not None:
        try:
            armored = signature_path(path).read_text(encoding="ascii")
            signing.verify(
                data, armored, allowed_signers=trust, namespace=NAMESPACE, principal=record.who, at=begun
            )
        except (OSError, UnicodeDecodeError, SignatureError) as exc:
            return f"{path} does not verify against {trust}: {getattr(exc, 'message', exc)}"
    return None


def _baseline(state: SiteState, history: VersionHistory) -> tuple[str, str, list[Finding]]:
    deployed = [h for h in history.hosts if h.bundle_version is not None]
    if history.current is None or not deployed:
        return NOT_ASSESSED, "no host has a deploy record with a bundle version", []
    current = history.current.bundle_version
    off = [h for h in deployed if _version_of(history, h.bundle_version) != current]
    findings = [
        _finding(
            ONE_VERSION,
            f"host/{h.host}",
            f"{h.host} runs bundle {h.bundle_version}; the site's current version is {current}",
            "finish the upgrade or rollback (aifactory upgrade / rollback), then deploy",
        )
        for h in off
    ]
    note = f"{len(deployed) - len(off)} of {len(deployed)} deployed host(s) run the current version {current}"
    return (FAIL if findings else PASS), note, findings


def _version_of(history: VersionHistory, text: str | None) -> BundleVersion | None:
    """The imported version a deploy record names (None: not a version imported here)."""
    found = history.find_text(text or "")
    return found.bundle_version if found else None


def _versions(history: VersionHistory) -> dict[str, Any]:
    return {
        "current": history.current.version if history.current else None,
        "versions": {version or "(none)": list(hosts) for version, hosts in history.by_version().items()},
    }


def _status(findings: list[Finding], rule: str) -> str:
    return FAIL if any(f.rule == rule for f in findings) else PASS


def _finding(rule: tuple[str, str], resource: str, message: str, remediation: str) -> Finding:
    return Finding(
        rule=rule[0],
        title=rule[1],
        controls=(BASELINE if rule is ONE_VERSION else CHANGE,),
        severity="moderate",
        resource=resource,
        message=message,
        remediation=remediation,
        status=FAIL,
        source=SOURCE,
    )


def _detail(record: dict[str, Any]) -> dict[str, Any]:
    return _mapping(record.get("detail"))


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
