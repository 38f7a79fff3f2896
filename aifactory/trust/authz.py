"""The runtime's authorization path: identity -> tenant -> policy decision -> durable decision record.

AC-3 (access enforcement), IA-2 (identification: the tenant comes only from a verified token or a
client certificate from the site CA that the TLS layer verified; when both come they must agree),
AU-12 (every decision recorded before anything acts on it). Fails closed: an engine error, an
unreadable revocation list or a log that cannot be written all deny.

The policy engine is `aifactory.policy.RuntimeAuthorizer` (one regorus engine per thread); it is
passed in, so servers and jobs share this code and tests can see the real engine's answers.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Protocol

from aifactory.errors import TokenRejected
from aifactory.ids import new_decision_id
from aifactory.trust.decisionlog import DecisionLog
from aifactory.trust.tokens import TokenVerifier

if TYPE_CHECKING:
    from aifactory.plan.model import SitePlan
    from aifactory.trust.certs import PeerCertificate

log = logging.getLogger(__name__)


class PolicyDecision(Protocol):
    """What the policy engine answers; read-only, so a frozen record satisfies it."""

    @property
    def allow(self) -> bool: ...
    @property
    def reasons(self) -> Sequence[str]: ...
    @property
    def decision_id(self) -> str: ...
    @property
    def controls(self) -> Sequence[str]: ...


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
    identity: str | None = None  # "token", "certificate", "token+certificate"; None: nobody was identified
    certificate: dict[str, str] | None = None  # the client certificate presented: serial, sha256

    def record(self, *, component: str, host: str | None) -> dict[str, Any]:
        return {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "component": component,
            "host": host,
            "decision_id": self.decision_id,
            "tenant": self.tenant,
            "identity": self.identity,
            "token_id": self.token_id,
            "certificate": self.certificate,
            "action": self.action,
            "resource": self.resource,
            "allow": self.allow,
            "reasons": list(self.reasons),
            "controls": list(self.controls),
            **({"request": self.request} if self.request else {}),
        }


@dataclass(frozen=True)
class Identity:
    tenant: str
    kind: str  # "token", "certificate" or "token+certificate"
    token_id: str | None = None


def _new_decision_id() -> str:
    return f"rt-{new_decision_id()}"


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
        self,
        token: str | None,
        action: str,
        resource: str,
        *,
        request: dict[str, Any] | None = None,
        certificate: PeerCertificate | None = None,
    ) -> Outcome:
        """Identify the caller and ask the policy; nothing is recorded yet (see `record`)."""
        extra = dict(request or {})
        presented = certificate.describe() if certificate else None
        try:
            identity = self.identify(token, certificate)
        except TokenRejected as rejected:
            return Outcome(
                False,
                (rejected.reason,),
                _new_decision_id(),
                action,
                resource,
                request=extra,
                certificate=presented,
            )
        try:
            decision = self.authorizer.decide(
                identity.tenant,
                action,
                resource,
                host_country=self.host_country,
                today=datetime.now(UTC).date(),
            )
            allow = decision.allow is True
            reasons = tuple(str(r) for r in decision.reasons) or (() if allow else ("denied",))
            decision_id, controls = str(decision.decision_id), tuple(str(c) for c in decision.controls)
        except Exception as exc:  # noqa: BLE001 -- any engine failure must deny, and be logged with its cause
            log.error("policy engine failed for %s %s %s: %r", identity.tenant, action, resource, exc)
            allow, reasons, decision_id, controls = False, ("engine-error",), _new_decision_id(), ()
        return Outcome(
            allow,
            reasons,
            decision_id,
            action,
            resource,
            identity.tenant,
            identity.token_id,
            controls,
            extra,
            identity.kind,
            presented,
        )

    def identify(self, token: str | None, certificate: PeerCertificate | None) -> Identity:
        """The tenant from a verified token, a verified client certificate, or both when they agree.

        A credential that is presented and fails denies, even when the other one would do.
        """
        if certificate is not None:
            tenant = self._certificate_tenant(certificate)
            if token is None:
                return Identity(tenant, "certificate")
        claims = self.verifier.verify(token)
        if certificate is None:
            return Identity(claims.tenant, "token", claims.id)
        if claims.tenant != tenant:
            raise TokenRejected(
                "identity-mismatch", "the token and the client certificate name different tenants"
            )
        return Identity(claims.tenant, "token+certificate", claims.id)

    def is_service(self, certificate: PeerCertificate | None, service: str) -> bool:
        """Whether a verified client certificate is the site service `service` (aifactory://SITE/service/S),
        unexpired and not revoked. A service is no tenant: it reads /metrics and /healthz, nothing else."""
        if certificate is None or certificate.service != service:
            return False
        if time.time() >= certificate.not_after:
            return False
        try:
            self.verifier.check_not_revoked(certificate.revocation_id, reason="cert-revoked")
        except TokenRejected:
            return False
        return True

    def _certificate_tenant(self, certificate: PeerCertificate) -> str:
        if certificate.problem or certificate.tenant is None:
            reason = certificate.problem or "cert-no-tenant"
            raise TokenRejected(reason, "the client certificate names no tenant of this site")
        if time.time() >= certificate.not_after:  # a keep-alive connection can outlive its certificate
            raise TokenRejected("cert-expired", "the client certificate has expired")
        self.verifier.check_not_revoked(certificate.revocation_id, reason="cert-revoked")
        return certificate.tenant

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
            return replace(outcome, allow=False, reasons=("log-unavailable",), controls=())
        return outcome


POLICY_TIME_LIMIT_S = 0.5


def load_authorizer(plan: SitePlan, *, time_limit_s: float = POLICY_TIME_LIMIT_S) -> Authorizer:
    """The site's runtime policy engine (imported late: the policy package is another stage's).

    The engine's limit is wall-clock time around one evaluation; on a busy node (many request threads,
    few cores) a cheap evaluation can wait that long for the CPU, so the runtime's default is 0.5 s
    rather than the engine's 50 ms: past it, the request is still denied (engine-timeout).
    """
    from aifactory.policy import RuntimeAuthorizer

    return RuntimeAuthorizer(plan, time_limit_s=time_limit_s)
