"""What every policy engine backend offers, and the fail-closed error they raise.

A backend evaluates rule paths (`data.aifactory.locality.deny`) against one input and returns
their JSON values; a path the policies leave undefined comes back as `None`. Anything else that
goes wrong (an engine error, a time limit passed, an unreachable server) raises
`PolicyEngineError`, which callers turn into a deny: the engine never fails open.

The backends (regorus_backend, opa_backend) import this module; `engine.make_backend` imports the
backends. Nothing here imports a backend, so the imports run one way.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from aifactory.errors import PolicyEngineError

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


def engine_error(
    message: str, *, code: str = "policy-cannot-evaluate", hint: str | None = None
) -> PolicyEngineError:
    return PolicyEngineError(
        message,
        code=code,
        hint=hint or "the decision is deny until the policy engine answers; rerun with --debug for details",
    )
