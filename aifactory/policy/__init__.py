"""Policy as code: the site check and per-request decisions, on an embedded or an OPA engine.

report = check_site(planned)                   # PolicyReport; .denied, .as_dict()
authz = RuntimeAuthorizer(plan)                # per request, thread-safe, fails closed
authz.decide("research", "infer", "model/triage-llm", host_country="NG")
"""

import logging

from aifactory.errors import PolicyEngineError
from aifactory.policy.check import check_site, evaluate_plan
from aifactory.policy.metadata import PolicySet, load_policy_set
from aifactory.policy.report import ControlResult, Finding, PolicyReport
from aifactory.policy.runtime import Decision, RuntimeAuthorizer

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ControlResult",
    "Decision",
    "Finding",
    "PolicyEngineError",
    "PolicyReport",
    "PolicySet",
    "RuntimeAuthorizer",
    "check_site",
    "evaluate_plan",
    "load_policy_set",
]
