"""`check_site`: the site check before anything is provisioned."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from aifactory.errors import PolicyEngineError
from aifactory.plan import PlannedSite
from aifactory.plan.model import SitePlan
from aifactory.policy.backend import DEFAULT_TIME_LIMIT_S, PolicyBackend, engine_error
from aifactory.policy.engine import make_backend
from aifactory.policy.inputs import site_input
from aifactory.policy.metadata import Annotation, PolicySet, load_policy_set
from aifactory.policy.report import PolicyReport, apply_waivers, control_results
from aifactory.policy.waivers import Waiver, load_waivers, waivers_path_for

log = logging.getLogger(__name__)
RESULT_KEYS = {"rule", "control", "controls", "severity", "resource", "msg"}


def check_site(
    planned: PlannedSite,
    *,
    engine: str = "embedded",
    opa_url: str | None = None,
    waivers: Path | None = None,
    today: dt.date | None = None,
    policies: PolicySet | None = None,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
) -> PolicyReport:
    """Evaluate every site package against the plan; raises PolicyEngineError when it cannot decide.

    Waivers default to `<spec stem>.waivers.yaml` beside the spec, when that file exists.
    """
    policies = policies or load_policy_set()
    backend = make_backend(policies, engine=engine, opa_url=opa_url, time_limit_s=time_limit_s)
    waiver_file = waivers if waivers is not None else _default_waivers(planned)
    loaded_waivers = load_waivers(waiver_file, known_rules=set(policies.rules)) if waiver_file else []
    return evaluate_plan(
        planned.plan,
        backend=backend,
        policies=policies,
        waivers=loaded_waivers,
        today=today or dt.date.today(),
    )


def _default_waivers(planned: PlannedSite) -> Path | None:
    candidate = waivers_path_for(Path(planned.loaded.source.file))
    return candidate if candidate.exists() else None


def evaluate_plan(
    plan: SitePlan,
    *,
    backend: PolicyBackend,
    policies: PolicySet,
    waivers: list[Waiver],
    today: dt.date,
) -> PolicyReport:
    packages = policies.deny_packages()
    doc = site_input(plan, today.isoformat())
    values = backend.evaluate([f"data.aifactory.{p}.deny" for p in packages], doc)
    raw = [
        item
        for package, value in zip(packages, values, strict=True)
        for item in _results(policies, package, value)
    ]
    findings, problems = apply_waivers(raw, waivers, policies, today)
    return PolicyReport(
        site=plan.site.name,
        jurisdiction=plan.site.jurisdiction,
        engine=backend.name,
        today=today,
        findings=findings,
        controls=control_results(policies, findings, packages),
        waiver_problems=problems,
        policy_digest=policies.digest,
        spec_digest=plan.spec_digest,
        rules_evaluated=sum(1 for a in policies.rules.values() if a.package in packages),
    )


def _results(policies: PolicySet, package: str, value: Any) -> list[tuple[Annotation, str, str]]:
    """Check the shape of one package's deny set; anything unexpected is an engine error (deny)."""
    if not isinstance(value, list):
        raise _malformed(f"data.aifactory.{package}.deny is {_kind(value)}, not a set of results")
    out = []
    for item in value:
        if not isinstance(item, dict) or set(item) != RESULT_KEYS:
            raise _malformed(f"data.aifactory.{package}.deny holds a malformed result: {str(item)[:200]}")
        annotation = policies.rules.get(item["rule"])
        if annotation is None or annotation.package != package:
            raise _malformed(f"data.aifactory.{package}.deny names an unannotated rule {item['rule']!r}")
        if not isinstance(item["resource"], str) or not isinstance(item["msg"], str):
            raise _malformed(f"a result of {item['rule']} has a non-text resource or message")
        if item["controls"] != list(annotation.controls) or item["severity"] != annotation.severity:
            raise _malformed(f"a result of {item['rule']} disagrees with the rule's METADATA")
        out.append((annotation, item["resource"], item["msg"]))
    return out


def _kind(value: Any) -> str:
    return "undefined" if value is None else type(value).__name__


def _malformed(message: str) -> PolicyEngineError:
    return engine_error(f"malformed policy answer: {message}", code="policy-malformed-answer")
