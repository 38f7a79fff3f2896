"""`aifactory audit report`: plan the site, check its policies, gather evidence, write and sign.

    DIR/report.html              for people (self-contained, printable)
    DIR/report.json              the same as data (docs/report.schema.json)
    DIR/assessment-results.json  OSCAL Assessment Results, importing:
    DIR/assessment-plan.json     OSCAL Assessment Plan, importing:
    DIR/ssp.json                 OSCAL System Security Plan (from the spec and plan), importing:
    DIR/profile.json             the moderate baseline profile aifactory ships (NIST catalog by digest)
    DIR/poam.json                OSCAL POA&M: every failing and waived control
    DIR/SHA256SUMS, SHA256SUMS.sig, allowed_signers

Reproducible: the same spec, evidence, key and --timestamp give the same bytes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifactory.audit import scap
from aifactory.audit.assemble import build_report
from aifactory.audit.assessment_plan import build_assessment_plan
from aifactory.audit.catalog import PROFILE, content_file
from aifactory.audit.evidence import gather_evidence
from aifactory.audit.html import write_html
from aifactory.audit.model import AuditReport, parse_timestamp
from aifactory.audit.oscal import (
    AP_FILE,
    POAM_FILE,
    PROFILE_FILE,
    SSP_FILE,
    write_assessment_results,
    write_document,
)
from aifactory.audit.poam import build_poam
from aifactory.audit.sign import SigningKey, given_key, sign_folder, site_audit_key
from aifactory.audit.ssp import build_ssp
from aifactory.errors import AuditError, Location
from aifactory.headcopies import merge_incoming
from aifactory.plan.build import PlannedSite
from aifactory.spec.model import DEFAULT_LOG_RETENTION_DAYS
from aifactory.state import SiteState

HTML, JSON, OSCAL = "report.html", "report.json", "assessment-results.json"
REPORT_FILES = (HTML, JSON, OSCAL, AP_FILE, SSP_FILE, POAM_FILE, PROFILE_FILE)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportOptions:
    timestamp: str | None = None  # ISO 8601; default now
    key: Path | None = None  # default: the site's audit key
    identity: str | None = None
    decision_logs: Sequence[Path] = ()
    waivers: Path | None = None
    scap_waivers: Path | None = None  # default: <spec stem>.scap-waivers.yaml beside the spec
    engine: str = "embedded"
    opa_url: str | None = None
    bundle_trust: Path | None = None
    state_home: Path | None = None
    models: Sequence[tuple[str, Path]] = ()  # (model, its folder as this machine reaches it)
    model_trust: Path | None = None  # the site's model-signing public key (models and dataset versions)
    datasets: Sequence[tuple[str, Path]] = ()  # (dataset, its folder as this machine reaches it)


@dataclass(frozen=True)
class WrittenReport:
    folder: Path
    report: AuditReport
    files: tuple[str, ...]
    identity: str
    policy_denied: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def check_policies(planned: PlannedSite, options: ReportOptions, today: Any) -> dict[str, Any]:
    """The policy engineer's `check_site`, as a JSON-ready dict."""
    from aifactory.policy import check_site  # late: the policy engine loads only when the report runs

    result = check_site(
        planned, engine=options.engine, opa_url=options.opa_url, waivers=options.waivers, today=today
    )
    return dict(result.as_dict())


def write_report_json(report: AuditReport, path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        json.dump(report.as_dict(), handle, indent=1, ensure_ascii=False)
        handle.write("\n")


def _prepare_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AuditError(
            f"cannot create the report folder {folder}: {exc.strerror}", location=Location(file=str(folder))
        ) from None
    if not folder.is_dir():
        raise AuditError(f"{folder} is not a folder", location=Location(file=str(folder)))


class _Stopwatch:
    """Seconds per stage, for --debug and the benchmark."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self._last, 4)
        self._last = now


def _retention_days(planned: PlannedSite) -> int:
    logs = planned.loaded.spec.logs
    return logs.retention_days if logs is not None else DEFAULT_LOG_RETENTION_DAYS


def produce_report(
    planned: PlannedSite, folder: Path, options: ReportOptions = ReportOptions()
) -> WrittenReport:
    """The signed report of a planned site (planned once, by the caller) into `folder`."""
    timestamp = parse_timestamp(options.timestamp)
    watch = _Stopwatch()
    state = SiteState.for_site(planned.plan.name, home=options.state_home)
    watch.lap("plan")
    policy = check_policies(planned, options, timestamp.date())
    watch.lap("policy")
    # The plan's digest serializes every host: take the one the policy check computed.
    plan_digest = str(policy.get("plan_digest") or planned.plan.digest())
    merge_incoming(state)  # signed heads a deploy fetched and did not merge yet (AU-9)
    evidence, bundle_digest = gather_evidence(
        plan=planned.plan,
        plan_digest=plan_digest,
        policy=policy,
        state=state,
        decision_logs=options.decision_logs,
        bundle_trust=options.bundle_trust,
        retention_days=_retention_days(planned),
        scap_waivers=options.scap_waivers or scap.waivers_path_for(Path(planned.loaded.source.file)),
        today=timestamp.date(),
        models=options.models,
        model_trust=options.model_trust,
        datasets=options.datasets,
    )
    key: SigningKey = given_key(options.key, options.identity) if options.key else site_audit_key(state)
    report = build_report(
        plan=planned.plan,
        evidence=evidence,
        timestamp=timestamp,
        bundle_digest=bundle_digest,
        signer=key.describe(),
        plan_digest=plan_digest,
    )
    watch.lap("evidence")
    _prepare_folder(folder)
    write_report_json(report, folder / JSON)
    watch.lap("report.json")
    write_html(report, folder / HTML)
    watch.lap("report.html")
    write_assessment_results(report, report.report_id, folder / OSCAL)
    watch.lap("assessment-results.json")
    write_document(build_assessment_plan(report), folder / AP_FILE)
    write_document(build_ssp(planned.plan, report), folder / SSP_FILE)
    write_document(build_poam(report), folder / POAM_FILE)
    (folder / PROFILE_FILE).write_bytes(content_file(PROFILE).read_bytes())
    watch.lap("ssp, assessment plan, POA&M")
    sign_folder(folder, REPORT_FILES, key)
    watch.lap("sign")
    log.debug("audit report stages (s): %s", watch.timings)
    return WrittenReport(
        folder, report, REPORT_FILES, key.identity, bool(policy.get("denied")), watch.timings
    )
