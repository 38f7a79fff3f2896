"""Fail closed: an engine error, a timeout or a malformed answer is a deny and exit 3, never a pass.

Each case is the real policy tree, copied, with one module broken on purpose; the real regorus
engine evaluates it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from aifactory.errors import ExitCode, PolicyEngineError
from aifactory.plan import plan_site
from aifactory.policy import RuntimeAuthorizer, check_site, load_policy_set

from .conftest import LAB_SITE, REPO

CONFLICT = "\n_boom := 1\n\n_boom := 2\n\ndeny contains _boom if true\n"  # two values: an eval error
SLOW = "\ndeny contains n if {\n\tn := count([x | some x in numbers.range(1, 100000000)])\n\tn < 0\n}\n"
MALFORMED = '\ndeny contains "not a structured result" if true\n'
SYNTAX = "\ndeny contains if {\n"


def broken_tree(tmp_path: Path, module: str, append: str) -> Path:
    """A copy of the policies folder (under tmp/resources/policies) with text appended to one module."""
    tree = tmp_path / "resources" / "policies"
    shutil.copytree(load_policy_set().root, tree)
    path = tree / module
    path.write_text(path.read_text() + append)
    return tree


@pytest.fixture(scope="module")
def lab():  # type: ignore[no-untyped-def]
    return plan_site(LAB_SITE, write_lock=False)


@pytest.mark.parametrize(
    ("append", "code"),
    [
        (CONFLICT, "policy-cannot-evaluate"),
        (MALFORMED, "policy-malformed-answer"),
        (SYNTAX, "policy-compile"),
    ],
    ids=["engine-error", "malformed-answer", "compile-error"],
)
def test_site_check_cannot_evaluate(lab, tmp_path: Path, append: str, code: str) -> None:  # type: ignore[no-untyped-def]
    tree = broken_tree(tmp_path, "locality.rego", append)
    with pytest.raises(PolicyEngineError) as caught:
        check_site(lab, policies=load_policy_set(tree))
    assert caught.value.code == code
    assert caught.value.exit_code == ExitCode.CANNOT_EVALUATE


def test_site_check_timeout_kills_the_evaluation(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tree = broken_tree(tmp_path, "encryption.rego", SLOW)
    started = dt.datetime.now()
    with pytest.raises(PolicyEngineError) as caught:
        check_site(lab, policies=load_policy_set(tree), time_limit_s=0.5)
    assert caught.value.code == "policy-timeout"
    assert caught.value.exit_code == ExitCode.CANNOT_EVALUATE
    assert (dt.datetime.now() - started).total_seconds() < 5  # the watchdog stopped it, not the loop's end


@pytest.mark.parametrize("append", [CONFLICT, MALFORMED], ids=["engine-error", "malformed-answer"])
def test_cli_exits_3_when_it_cannot_evaluate(tmp_path: Path, append: str) -> None:
    tree = broken_tree(tmp_path, "access.rego", append)
    env = {**os.environ, "AIFACTORY_RESOURCES": str(tree.parent)}
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "aifactory"), "policy", "check", str(LAB_SITE)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "error[policy-" in result.stderr and "Traceback" not in result.stderr
    assert "PASS" not in result.stdout


def test_cli_exits_3_on_timeout(tmp_path: Path) -> None:
    tree = broken_tree(tmp_path, "egress.rego", SLOW)
    env = {**os.environ, "AIFACTORY_RESOURCES": str(tree.parent)}
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "aifactory"), "policy", "check", str(LAB_SITE), "--time-limit", "0.5"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "error[policy-timeout]" in result.stderr and "0.5 s" in result.stderr


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_opa_server_cannot_evaluate(lab) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PolicyEngineError) as caught:
        check_site(lab, engine="opa", opa_url=f"http://127.0.0.1:{_closed_port()}")
    assert caught.value.exit_code == ExitCode.CANNOT_EVALUATE


RuntimeBreak = Callable[[Path], Path]


@pytest.mark.parametrize(
    ("append", "reason"),
    [
        (CONFLICT.replace("deny contains _boom if true", "reasons contains _boom if true"), "engine-error"),
        ("\nreasons contains 42 if true\n", "engine-error"),  # malformed: not a known reason code
    ],
    ids=["engine-error", "malformed-answer"],
)
def test_runtime_decision_fails_closed(lab, tmp_path: Path, append: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    tree = broken_tree(tmp_path, "runtime.rego", append)
    authz = RuntimeAuthorizer(lab.plan, policies=load_policy_set(tree))
    decision = authz.decide("health", "infer", "model/vitals-mlp", host_country="NG")
    assert not decision.allow
    assert decision.reasons == [reason]
    assert decision.controls == ["SI-17"]


def test_runtime_decision_past_its_time_limit_is_denied(lab) -> None:  # type: ignore[no-untyped-def]
    authz = RuntimeAuthorizer(lab.plan)
    assert authz.decide("health", "infer", "model/vitals-mlp", host_country="NG").allow
    authz.backend.time_limit_s = 1e-9
    decision = authz.decide("health", "infer", "model/vitals-mlp", host_country="NG")
    assert (decision.allow, decision.reasons) == (False, ["engine-timeout"])
