"""One engine interface, two backends (embedded regorus, an OPA server), and fail-closed answers.

A backend evaluates rule paths (`data.aifactory.locality.deny`) against one input and returns
their JSON values; a path the policies leave undefined comes back as `None`. Anything else that
goes wrong (an engine error, a time limit passed, an unreachable server) raises
`PolicyEngineError`, which callers turn into a deny: the engine never fails open.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from aifactory.errors import PolicyEngineError, UsageError
from aifactory.policy.metadata import PolicySet

ENGINES = ("embedded", "opa")
DEFAULT_TIME_LIMIT_S = 10.0


class PolicyBackend(ABC):
    """Evaluates rule paths of a loaded policy set."""

    name: str
    time_limit_s: float

    @abstractmethod
    def extend_data(self, extra: dict[str, Any]) -> None:
        """Add documents under data.aifactory (e.g. the compiled run-time facts) to every engine."""

    @abstractmethod
    def evaluate(self, paths: Sequence[str], input_doc: dict[str, Any]) -> list[Any]:
        """The value of each path for this input (None where undefined), or PolicyEngineError."""

    def evaluate_json(self, paths: Sequence[str], input_json: str) -> list[Any]:
        """The same, for an input already serialized (the per-request path avoids a second copy)."""
        return self.evaluate(paths, json.loads(input_json))


def make_backend(
    policies: PolicySet,
    *,
    engine: str = "embedded",
    opa_url: str | None = None,
    site: dict[str, Any] | None = None,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    hard_limit: bool = True,
    fast_paths: Sequence[str] = (),
) -> PolicyBackend:
    """The backend named `engine`, loaded with the policies, their data and (for run time) the site.

    `hard_limit` runs each evaluation in a forked child that is killed when the time limit passes
    (the site check); without it the limit is checked when the evaluation returns (run time, where
    a fork per request would cost more than the whole budget). `fast_paths` are rule paths the
    embedded engine compiles ahead (regorus RVM) because they are evaluated per request.
    """
    if engine == "embedded":
        from aifactory.policy.regorus_backend import RegorusBackend

        return RegorusBackend(
            policies, site=site, time_limit_s=time_limit_s, hard_limit=hard_limit, fast_paths=fast_paths
        )
    if engine == "opa":
        if not opa_url:
            raise UsageError("--engine opa needs --opa-url (e.g. http://127.0.0.1:8181)")
        from aifactory.policy.opa_backend import OpaBackend

        return OpaBackend(policies, url=opa_url, site=site, time_limit_s=time_limit_s)
    raise UsageError(f"unknown policy engine {engine!r}", hint=f"use one of: {', '.join(ENGINES)}")


def engine_error(
    message: str, *, code: str = "policy-cannot-evaluate", hint: str | None = None
) -> PolicyEngineError:
    return PolicyEngineError(
        message,
        code=code,
        hint=hint or "the decision is deny until the policy engine answers; rerun with --debug for details",
    )
