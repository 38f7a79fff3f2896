"""The runtime's authorization path: token -> tenant -> policy decision -> durable decision record.

AC-3 (access enforcement), IA-2 (identification: the tenant comes only from a verified token),
AU-12 (every decision recorded before anything acts on it). Fails closed: an engine error, an
unreadable revocation list or a log that cannot be written all deny.

The policy engine is `aifactory.policy.RuntimeAuthorizer` (one regorus engine per thread); it is
passed in, so servers and jobs share this code and tests can see the real engine's answers.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol

from aifactory.runtime.decisionlog import DecisionLog
from aifactory.runtime.tokens import TokenRejected, TokenVerifier

log = logging.getLogger(__name__)


class PolicyDecision(Protocol):
    allow: bool
    reasons: Sequence[str]
    decision_id: str
    controls: Sequence[str]


class Authorizer(Protocol):
    def decide(
        self,
        tenant: str,
        action: str,
        resource: str,
        *,
        host_country: str | None = None,
        today: date | None = None,
    ) -> PolicyDecision: ...


@dataclass(frozen=True)
class Outcome:
    """What was decided; `reasons` are codes a client may see (never the resource's classification)."""

    allow: bool
    reasons: tuple[str, ...]
    decision_id: str
    action: str
    resource: str
    tenant: str | None = None
    token_id: str | None = None
    controls: tuple[str, ...] = ()
    request: dict[str, Any] = field(default_factory=dict)

    def record(self, *, component: str, host: str | None) -> dict[str, Any]:
        return {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "component": component,
            "host": host,
            "decision_id": self.decision_id,
            "tenant": self.tenant,
            "token_id": self.token_id,
            "action": self.action,
            "resource": self.resource,
            "allow": self.allow,
            "reasons": list(self.reasons),
            "controls": list(self.controls),
            **({"request": self.request} if self.request else {}),
        }


def _new_decision_id() -> str:
    return f"rt-{uuid.uuid4().hex}"


class Guard:
    """Decides and records; thread-safe when the authorizer is (RuntimeAuthorizer is)."""

    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        authorizer: Authorizer,
        decisions: DecisionLog,
        component: str,
        host: str | None = None,
        host_country: str | None = None,
    ) -> None:
        self.verifier = verifier
        self.authorizer = authorizer
        self.decisions = decisions
        self.component = component
        self.host = host or socket.gethostname()
        self.host_country = host_country

    def decide(
        self, token: str | None, action: str, resource: str, *, request: dict[str, Any] | None = None
    ) -> Outcome:
        """Verify the token and ask the policy; nothing is recorded yet (see `record`)."""
        extra = dict(request or {})
        try:
            claims = self.verifier.verify(token)
        except TokenRejected as rejected:
            return Outcome(False, (rejected.reason,), _new_decision_id(), action, resource, request=extra)
        try:
            decision = self.authorizer.decide(
                claims.tenant,
                action,
                resource,
                host_country=self.host_country,
                today=datetime.now(UTC).date(),
            )
            allow = decision.allow is True
            reasons = tuple(str(r) for r in decision.reasons) or (() if allow else ("denied",))
            decision_id, controls = str(decision.decision_id), tuple(str(c) for c in decision.controls)
        except Exception as exc:  # noqa: BLE001 -- any engine failure must deny, and be logged with its cause
            log.error("policy engine failed for %s %s %s: %r", claims.tenant, action, resource, exc)
            allow, reasons, decision_id, controls = False, ("engine-error",), _new_decision_id(), ()
        return Outcome(
            allow, reasons, decision_id, action, resource, claims.tenant, claims.id, controls, extra
        )

    def record(self, outcome: Outcome) -> Future[dict[str, Any]]:
        """Queue the decision's record; the future resolves once it is durable."""
        return self.decisions.submit(outcome.record(component=self.component, host=self.host))

    def check(
        self, token: str | None, action: str, resource: str, *, request: dict[str, Any] | None = None
    ) -> Outcome:
        """Decide and wait until the record is on disk; a log that cannot be written denies."""
        outcome = self.decide(token, action, resource, request=request)
        try:
            self.record(outcome).result(timeout=30)
        except Exception as exc:  # noqa: BLE001 -- an unrecorded decision may not allow anything
            log.error("cannot record decision %s: %r", outcome.decision_id, exc)
            return Outcome(
                False,
                ("log-unavailable",),
                outcome.decision_id,
                action,
                resource,
                outcome.tenant,
                outcome.token_id,
            )
        return outcome


POLICY_TIME_LIMIT_S = 0.5


def load_authorizer(plan: dict[str, Any], *, time_limit_s: float = POLICY_TIME_LIMIT_S) -> Authorizer:
    """The site's runtime policy engine (imported late: the policy package is another stage's).

    The engine's limit is wall-clock time around one evaluation; on a busy node (many request threads,
    few cores) a cheap evaluation can wait that long for the CPU, so the runtime's default is 0.5 s
    rather than the engine's 50 ms: past it, the request is still denied (engine-timeout).
    """
    from aifactory.policy import RuntimeAuthorizer

    return RuntimeAuthorizer(plan, time_limit_s=time_limit_s)  # type: ignore[no-any-return]
