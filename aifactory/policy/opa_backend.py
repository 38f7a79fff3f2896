"""The `opa` backend: an OPA server reached through opa-python-client, for sites that run one.

On construction it uploads every policy module (as `aifactory/<file>`) and the data document
(places, annotations and, at run time, the site) to the server, so the server decides exactly
what the embedded engine decides. Each evaluation is a Data API query
(POST /v1/data/<path> {"input": ...}); an undefined result comes back as None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from aifactory.errors import PrerequisiteError, UsageError
from aifactory.policy.backend import PolicyBackend, engine_error
from aifactory.policy.metadata import PolicySet

# Loading policies and data is not a decision: it is not held to the decision's time limit (a busy
# server or machine may take a while to accept a module), only to this bound.
LOAD_TIMEOUT_S = 30.0


class OpaBackend(PolicyBackend):
    name = "opa"

    def __init__(
        self, policies: PolicySet, *, url: str, site: dict[str, Any] | None, time_limit_s: float
    ) -> None:
        try:
            from opa_client.opa import OpaClient
            from requests import Timeout  # opa-python-client's transport
        except ImportError as exc:
            raise PrerequisiteError(
                "the OPA backend needs opa-python-client",
                hint="install aifactory[control], or use --engine embedded",
            ) from exc
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--opa-url {url!r} is not an http(s) URL", hint="e.g. http://127.0.0.1:8181")
        self.url = url
        self._timeout_error: type[Exception] = Timeout
        self.time_limit_s = time_limit_s
        self.client = OpaClient(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 8181),
            ssl=parts.scheme == "https",
            timeout=LOAD_TIMEOUT_S,
            retries=0,
        )
        self._upload(policies, site)

    def _upload(self, policies: PolicySet, site: dict[str, Any] | None) -> None:
        self.client.timeout = LOAD_TIMEOUT_S
        try:
            for module in policies.policies:
                endpoint = "aifactory/" + module.path.relative_to(policies.root).as_posix()
                self.client.update_policy_from_string(module.source, endpoint, rego_compat=False)
            self.client.update_or_create_data(policies.data_document(site)["aifactory"], "aifactory")
        except Exception as exc:  # noqa: BLE001 - the client raises many types; each means "cannot load"
            raise engine_error(
                f"cannot load the policies into OPA at {self.url}: {exc}",
                hint="check that OPA runs there (opa run --server) and accepts policy uploads",
            ) from exc

    def extend_data(self, extra: dict[str, Any]) -> None:
        self.client.timeout = LOAD_TIMEOUT_S
        for key, value in extra.items():
            try:
                self.client.update_or_create_data(value, f"aifactory/{key}")
            except Exception as exc:  # noqa: BLE001 - any failure to load means the server cannot decide
                raise engine_error(f"cannot load data.aifactory.{key} into OPA at {self.url}: {exc}") from exc

    def evaluate(self, paths: Sequence[str], input_doc: dict[str, Any]) -> list[Any]:
        # The limit in force now: callers raise it for one-off evaluations (the runtime's compile).
        self.client.timeout = self.time_limit_s
        values = []
        for path in paths:
            package, _, rule = path.removeprefix("data.").rpartition(".")
            try:
                answer = self.client.query_rule(input_data=input_doc, package_path=package, rule_name=rule)
            except self._timeout_error as exc:
                raise engine_error(
                    f"OPA at {self.url} did not answer {path} within {self.time_limit_s:g} s",
                    code="policy-timeout",
                ) from exc
            except Exception as exc:  # noqa: BLE001 - refused connections, HTTP errors: all deny
                raise engine_error(f"OPA at {self.url} did not answer {path}: {exc}") from exc
            if not isinstance(answer, dict):
                raise engine_error(
                    f"OPA at {self.url} answered {path} with something other than an object",
                    code="policy-malformed-answer",
                )
            values.append(answer.get("result"))
        return values
