"""The embedded backend: regorus (Microsoft's Rego engine in Rust), one engine per thread.

A regorus Engine may not cross threads, so each thread gets its own, compiled once with every
policy module and the data document. regorus holds the GIL while it evaluates, so a watchdog
thread cannot stop it: with `hard_limit` each evaluation runs in a forked child (copy-on-write,
so nothing is compiled again) that is killed when the time limit passes; otherwise the elapsed
time is checked when the evaluation returns and a late answer is refused.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import regorus

from aifactory.errors import PolicyEngineError
from aifactory.policy.engine import PolicyBackend, engine_error
from aifactory.policy.metadata import PolicySet

UNDEFINED = "<undefined>"


def compile_engine(policies: PolicySet, data: dict[str, Any], *, include_tests: bool = False) -> regorus.Engine:
    """A fresh engine holding the policy modules (and tests, when asked) and the data document."""
    engine = regorus.Engine()
    modules = policies.modules if include_tests else policies.policies
    try:
        for module in modules:
            engine.add_policy(str(module.path.relative_to(policies.root)), module.source)
        engine.add_data_json(json.dumps(data))
    except RuntimeError as exc:
        raise engine_error(f"the policies do not compile: {_first_line(exc)}", code="policy-compile") from exc
    return engine


def eval_paths(engine: regorus.Engine, paths: Sequence[str]) -> list[Any]:
    """Evaluate each rule path; raises RuntimeError from the engine as it is."""
    values = []
    for path in paths:
        text = engine.eval_rule_as_json(path)
        value = json.loads(text)
        values.append(None if value == UNDEFINED else value)
    return values


class RegorusBackend(PolicyBackend):
    name = "embedded"

    def __init__(self, policies: PolicySet, *, site: dict[str, Any] | None, time_limit_s: float,
                 hard_limit: bool) -> None:
        self.policies = policies
        self.time_limit_s = time_limit_s
        self.hard_limit = hard_limit
        self._data = policies.data_document(site)
        self._local = threading.local()
        self.engine()  # compile now, so a broken policy fails at construction, not on first use

    def engine(self) -> regorus.Engine:
        engine = getattr(self._local, "engine", None)
        if engine is None:
            engine = compile_engine(self.policies, self._data)
            self._local.engine = engine
        return engine

    def evaluate(self, paths: Sequence[str], input_doc: dict[str, Any]) -> list[Any]:
        input_json = json.dumps(input_doc)
        if self.hard_limit:
            return _evaluate_in_child(self.engine(), input_json, paths, self.time_limit_s)
        return self.evaluate_json(paths, input_json)

    def evaluate_json(self, paths: Sequence[str], input_json: str) -> list[Any]:
        """In this thread, with the limit checked on return (the run-time path)."""
        engine = self.engine()
        started = time.perf_counter()
        try:
            engine.set_input_json(input_json)
            values = eval_paths(engine, paths)
        except (RuntimeError, ValueError) as exc:
            raise engine_error(f"the policy engine failed: {_first_line(exc)}") from exc
        elapsed = time.perf_counter() - started
        if elapsed > self.time_limit_s:
            raise _timeout(self.time_limit_s, elapsed)
        return values


def _timeout(limit: float, elapsed: float | None = None) -> PolicyEngineError:
    took = f" (took {elapsed:.3f} s)" if elapsed is not None else ""
    return engine_error(f"the policy evaluation passed its time limit of {limit:g} s{took}",
                        code="policy-timeout",
                        hint="the decision is deny; look for a policy or input that makes evaluation explode")


def _evaluate_in_child(engine: regorus.Engine, input_json: str, paths: Sequence[str], limit: float) -> list[Any]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: evaluate, write one JSON answer, leave without cleanup
        os.close(read_end)
        try:
            engine.set_input_json(input_json)
            payload = json.dumps({"values": eval_paths(engine, paths)})
        except BaseException as exc:  # noqa: BLE001 - anything at all must reach the parent as an error
            payload = json.dumps({"error": _first_line(exc)})
        data = payload.encode()
        while data:
            data = data[os.write(write_end, data):]
        os._exit(0)
    os.close(write_end)
    try:
        answer = _read_until(read_end, time.monotonic() + limit)
    finally:
        os.close(read_end)
        _reap(pid, kill=True)
    if answer is None:
        raise _timeout(limit)
    try:
        message = json.loads(answer)
    except ValueError as exc:
        raise engine_error("the policy engine died without an answer") from exc
    if "error" in message:
        raise engine_error(f"the policy engine failed: {message['error']}")
    return list(message["values"])


def _read_until(fd: int, deadline: float) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _reap(pid: int, *, kill: bool) -> None:
    done, _ = os.waitpid(pid, os.WNOHANG)
    if done == 0 and kill:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
