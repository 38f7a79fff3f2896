"""Per-request decisions at run time: may this tenant do this action on this resource, here, today?

The site (from the plan) is loaded into each engine once as data.aifactory.site; a request sets only
a tiny input. One regorus engine per thread. Any failure answers deny with reason "engine-error"
(or "engine-timeout"); the decision never fails open.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aifactory.errors import AifactoryError
from aifactory.ids import new_decision_id
from aifactory.plan.model import SitePlan
from aifactory.policy.backend import PolicyBackend, engine_error
from aifactory.policy.engine import make_backend
from aifactory.policy.inputs import site_document
from aifactory.policy.metadata import PolicySet, load_policy_set

log = logging.getLogger(__name__)
DECISION_PATH = "data.aifactory.runtime.decision"
COMPILED_PATH = "data.aifactory.runtime.compiled"
COMPILED_KEYS = {"owner", "classification_rank", "residency", "clearance_rank", "grants"}
COMPILE_TIME_LIMIT_S = 30.0
RUNTIME_TIME_LIMIT_S = 0.05
ENGINE_REASONS = {"engine-error": ["SI-17"], "engine-timeout": ["SI-17"]}


@dataclass(frozen=True)
class Decision:
    allow: bool
    reasons: list[str]
    decision_id: str
    controls: list[str]
    tenant: str
    action: str
    resource: str
    host_country: str | None = None
    today: str = ""
    detail: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "allow": self.allow,
            "reasons": list(self.reasons),
            "decision_id": self.decision_id,
            "controls": list(self.controls),
            "tenant": self.tenant,
            "action": self.action,
            "resource": self.resource,
            "host_country": self.host_country,
            "today": self.today,
            "detail": self.detail,
        }


class RuntimeAuthorizer:
    """Decides requests against one site's plan (a bundle's plan.json read with `SitePlan.load`)."""

    def __init__(
        self,
        plan: SitePlan,
        *,
        engine: str = "embedded",
        opa_url: str | None = None,
        policies: PolicySet | None = None,
        time_limit_s: float = RUNTIME_TIME_LIMIT_S,
    ) -> None:
        self.policies = policies or load_policy_set()
        self.site = site_document(plan, hosts=False)
        self.backend: PolicyBackend = make_backend(
            self.policies,
            engine=engine,
            opa_url=opa_url,
            site=self.site,
            time_limit_s=time_limit_s,
            hard_limit=False,
            fast_paths=(DECISION_PATH,),
        )
        self.backend.extend_data({"compiled": self._compile()})
        self._controls = {
            a.id.split(".", 1)[1]: list(a.controls)
            for a in self.policies.rules.values()
            if a.package == "runtime"
        }
        self._allow_controls = list(self.policies.packages["runtime"].controls)

    def decide(
        self,
        tenant: str,
        action: str,
        resource: str,
        *,
        host_country: str | None = None,
        today: dt.date | None = None,
    ) -> Decision:
        day = (today or dt.date.today()).isoformat()
        kind, _, name = resource.partition("/")
        request = {
            "tenant": tenant,
            "action": action,
            "resource": resource,
            "kind": kind,
            "name": name,
            "host_country": host_country,
            "today": day,
        }
        decision_id = new_decision_id()
        try:
            (value,) = self.backend.evaluate_json((DECISION_PATH,), json.dumps(request))
            allow, reasons = self._check(value)
        except AifactoryError as exc:
            reason = "engine-timeout" if exc.code == "policy-timeout" else "engine-error"
            log.warning("runtime decision failed closed: %s", exc.message)
            return Decision(
                False,
                [reason],
                decision_id,
                ENGINE_REASONS[reason],
                tenant,
                action,
                resource,
                host_country,
                day,
                exc.message,
            )
        controls = self._allow_controls if allow else sorted({c for r in reasons for c in self._controls[r]})
        return Decision(allow, reasons, decision_id, controls, tenant, action, resource, host_country, day)

    def _compile(self) -> dict[str, Any]:
        """The site's request-independent facts, computed by the runtime policy itself, once."""
        started = time.perf_counter()
        saved, self.backend.time_limit_s = self.backend.time_limit_s, COMPILE_TIME_LIMIT_S
        try:
            (facts,) = self.backend.evaluate((COMPILED_PATH,), {})
        finally:
            self.backend.time_limit_s = saved
        if not isinstance(facts, dict) or set(facts) != COMPILED_KEYS:
            raise engine_error(
                f"malformed {COMPILED_PATH}: {str(facts)[:200]}", code="policy-malformed-answer"
            )
        log.debug("compiled runtime facts in %.1f ms", (time.perf_counter() - started) * 1000)
        return facts

    def _check(self, value: Any) -> tuple[bool, list[str]]:
        if not (
            isinstance(value, dict)
            and set(value) == {"allow", "reasons"}
            and isinstance(value["allow"], bool)
            and isinstance(value["reasons"], list)
            and all(r in self._controls for r in value["reasons"])
            and value["allow"] == (not value["reasons"])
        ):
            raise engine_error(
                f"malformed runtime decision: {str(value)[:200]}", code="policy-malformed-answer"
            )
        return value["allow"], list(value["reasons"])
