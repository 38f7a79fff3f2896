"""The embedded backend: regorus (Microsoft's Rego engine in Rust), one engine per thread.

A regorus Engine may not cross threads, so each thread gets its own, compiled once with every
policy module and the data document. regorus holds the GIL while it evaluates, so a watchdog
thread cannot stop it: with `hard_limit` each evaluation runs in a forked child (copy-on-write,
so nothing is compiled again) that is killed when the time limit passes; otherwise the elapsed
time is checked when the evaluation returns and a late answer is refused.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import regorus

from aifactory.errors import PolicyEngineError
from aifactory.policy.backend import PolicyBackend, engine_error
from aifactory.policy.metadata import PolicySet

UNDEFINED = "<undefined>"
log = logging.getLogger(__name__)


def compile_engine(
    policies: PolicySet, data: dict[str, Any], *, include_tests: bool = False
) -> regorus.Engine:
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
    """Evaluate the rule paths; raises RuntimeError from the engine as it is.

    Several paths go into one query, so what they share (the lookup tables of data.aifactory.lib)
    is computed once; if any of them is undefined, each is evaluated alone to say which.
    """
    if len(paths) > 1:
        answer = json.loads(engine.eval_query_as_json(f"x := [{', '.join(paths)}]"))
        results = answer.get("result") or []
        if len(results) == 1:
            return list(results[0]["bindings"]["x"])
    return [_value(engine.eval_rule_as_json(path)) for path in paths]


def _value(text: str) -> Any:
    value = json.loads(text)
    return None if value == UNDEFINED else value


def compile_program(policies: PolicySet, data: dict[str, Any], entry_points: Sequence[str]) -> regorus.Rvm:
    """A regorus RVM (compiled Rego, about ten times faster per query) for the given entry points."""
    data_json = json.dumps(data)
    modules = [(str(m.path.relative_to(policies.root)), m.source) for m in policies.policies]
    program = regorus.Program.compile_from_modules(data_json, modules, list(entry_points))
    vm = regorus.Rvm()
    vm.load_program(program)
    vm.set_data_json(data_json)
    return vm


class RegorusBackend(PolicyBackend):
    """`fast_paths` are evaluated by a compiled RVM program (run time); everything else, and every
    path when the RVM cannot compile the policies, by the regorus interpreter."""

    name = "embedded"

    def __init__(
        self,
        policies: PolicySet,
        *,
        site: dict[str, Any] | None,
        time_limit_s: float,
        hard_limit: bool,
        fast_paths: Sequence[str] = (),
    ) -> None:
        self.policies = policies
        self.time_limit_s = time_limit_s
        self.hard_limit = hard_limit
        self.fast_paths = tuple(fast_paths)
        self._data = policies.data_document(site)
        self._generation = 0  # bumped by extend_data: per-thread engines older than this are rebuilt
        self._local = threading.local()
        self.engine()  # compile now, so a broken policy fails at construction, not on first use

    def engine(self) -> regorus.Engine:
        if getattr(self._local, "generation", None) != self._generation:
            self._local.engine = compile_engine(self.policies, self._data)
            self._local.vm = None
            self._local.generation = self._generation
        return self._local.engine

    def program(self) -> regorus.Rvm | None:
        """This thread's RVM for the fast paths, or None (no fast paths, or the RVM cannot compile them)."""
        self.engine()
        if self._local.vm is None and self.fast_paths:
            try:
                self._local.vm = compile_program(self.policies, self._data, self.fast_paths)
            except RuntimeError as exc:
                log.warning(
                    "the regorus RVM cannot compile the policies (%s); using the interpreter",
                    _first_line(exc),
                )
                self.fast_paths = ()
        return self._local.vm

    def extend_data(self, extra: dict[str, Any]) -> None:
        self._data = {"aifactory": {**self._data["aifactory"], **extra}}
        self._generation += 1
        self.engine()

    def evaluate(self, paths: Sequence[str], input_doc: dict[str, Any]) -> list[Any]:
        if self.hard_limit:
            return _evaluate_in_child(self.engine(), input_doc, paths, self.time_limit_s)
        return self.evaluate_json(paths, json.dumps(input_doc))

    def evaluate_json(self, paths: Sequence[str], input_json: str) -> list[Any]:
        """In this thread, with the limit checked on return (the run-time path)."""
        vm = self.program() if self.fast_paths and all(p in self.fast_paths for p in paths) else None
        started = time.perf_counter()
        try:
            if vm is not None:
                vm.set_input_json(input_json)
                values = [_value(vm.execute_entry_point(path)) for path in paths]
            else:
                engine = self.engine()
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
    return engine_error(
        f"the policy evaluation passed its time limit of {limit:g} s{took}",
        code="policy-timeout",
        hint="the decision is deny; look for a policy or input that makes evaluation explode",
    )


def _evaluate_in_child(
    engine: regorus.Engine, input_doc: dict[str, Any], paths: Sequence[str], limit: float
) -> list[Any]:
    """Evaluate in a forked child (it shares the compiled engine and the input, copy-on-write)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: evaluate, write one JSON answer, leave without cleanup
        os.close(read_end)
        try:
            engine.set_input(input_doc)
            payload = json.dumps({"values": eval_paths(engine, paths)})
        except BaseException as exc:  # noqa: BLE001 - anything at all must reach the parent as an error
            payload = json.dumps({"error": _first_line(exc)})
        data = payload.encode()
        while data:
            data = data[os.write(write_end, data) :]
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
