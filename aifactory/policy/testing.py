"""Run the Rego tests (`test_*` rules of `*_test` packages): with the embedded engine, or with
`opa test` when an `opa` binary is available."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.errors import PrerequisiteError
from aifactory.policy.backend import engine_error
from aifactory.policy.metadata import PolicySet, load_policy_set
from aifactory.policy.regorus_backend import compile_engine

_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]+)\s+if\b", re.MULTILINE)


@dataclass(frozen=True)
class RegoTestResult:
    name: str  # data.aifactory.locality_test.test_datacenter_abroad_denied
    passed: bool
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "error": self.error}


def list_rego_tests(policies: PolicySet) -> list[str]:
    names = []
    for module in policies.tests:
        for rule in dict.fromkeys(_TEST_RULE.findall(module.source)):
            names.append(f"data.{module.package}.{rule}")
    return names


def run_rego_tests(root: Path | None = None, policies: PolicySet | None = None) -> list[RegoTestResult]:
    policies = policies or load_policy_set(root)
    engine = compile_engine(policies, policies.data_document(), include_tests=True)
    results = []
    for name in list_rego_tests(policies):
        try:
            value = engine.eval_rule(name)
        except RuntimeError as exc:
            results.append(RegoTestResult(name, False, str(exc).strip().splitlines()[0]))
            continue
        results.append(RegoTestResult(name, value is True, None if value is True else "undefined or false"))
    return results


def run_opa_tests(
    root: Path | None = None, policies: PolicySet | None = None, *, timeout_s: float = 300.0
) -> list[RegoTestResult]:
    """The same tests through `opa test`, with the same data document (places and annotations)."""
    opa = shutil.which("opa")
    if opa is None:
        raise PrerequisiteError("no `opa` binary on the PATH", hint="install OPA, or run the tests embedded")
    policies = policies or load_policy_set(root)
    with tempfile.TemporaryDirectory(prefix="aifactory-opa-test-") as folder:
        data = Path(folder) / "data.json"
        data.write_text(json.dumps(policies.data_document()))
        argv = [opa, "test", "--format", "json", *(str(m.path) for m in policies.modules), str(data)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise engine_error(
                f"opa test passed its time limit of {timeout_s:g} s", code="policy-timeout"
            ) from exc
    try:
        report = json.loads(done.stdout)
    except ValueError as exc:
        raise engine_error(f"opa test gave no JSON report: {done.stderr.strip()[:300]}") from exc
    return [
        RegoTestResult(
            f"{item['package']}.{item['name']}",
            not (item.get("fail") or item.get("error")),
            str(item["error"]) if item.get("error") else ("failed" if item.get("fail") else None),
        )
        for item in report
    ]


def without_rule(policies: PolicySet, rule_id: str) -> dict[str, str]:
    """Every module's source (by path under the policy root) with one rule and its METADATA removed.

    Used by the mutation check: removing any rule must make at least one Rego test fail.
    """
    annotation = policies.rule(rule_id)
    sources = {m.path.relative_to(policies.root).as_posix(): m.source for m in policies.modules}
    key = next(k for k in sources if k.rsplit("/", 1)[-1] == annotation.file)
    lines = sources[key].splitlines(keepends=True)
    start = annotation.line - 1  # the "# METADATA" line
    end = start
    while end < len(lines) and lines[end].startswith("#"):
        end += 1
    while end < len(lines) and lines[end].strip():
        end += 1
    sources[key] = "".join(lines[:start] + lines[end:])
    return sources
