"""One engine interface, two backends (embedded regorus, an OPA server), and fail-closed answers.

The interface and the fail-closed error are in `aifactory.policy.backend`; this module picks and
loads a backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aifactory.errors import UsageError
from aifactory.policy.backend import DEFAULT_TIME_LIMIT_S, PolicyBackend
from aifactory.policy.metadata import PolicySet
from aifactory.policy.opa_backend import OpaBackend
from aifactory.policy.regorus_backend import RegorusBackend

__all__ = ["ENGINES", "make_backend"]

ENGINES = ("embedded", "opa")


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
        return RegorusBackend(
            policies, site=site, time_limit_s=time_limit_s, hard_limit=hard_limit, fast_paths=fast_paths
        )
    if engine == "opa":
        if not opa_url:
            raise UsageError("--engine opa needs --opa-url (e.g. http://127.0.0.1:8181)")
        return OpaBackend(policies, url=opa_url, site=site, time_limit_s=time_limit_s)
    raise UsageError(f"unknown policy engine {engine!r}", hint=f"use one of: {', '.join(ENGINES)}")
