"""The suite on several worker processes (pytest-xdist, `-n auto` in pyproject.toml), one more than the
cores, up to `MAX_WORKERS`, with whole modules as the units of work and one unit for every module on the
session's lab.

Why: half of a 2-core machine sat idle through the suite (tests wait on sshd, Ansible and services far
more than they compute), and the lab tests share a lab that is expensive to bring up and deploy. So:

- Every module whose tests use the session's `lab` fixture (`deployed_lab` and the bundle imported on it
  use it too) is one unit, the session lab's, so only one worker brings a session lab up, and those
  modules keep tests/suite_order.py's order among themselves (the deploy tests before the deployed lab's
  modules, acceptance last).
- Every other module is a unit of its own: its tests stay in file order on one worker (some depend on
  it) and its module fixtures are set up once (a module that brings up a lab of its own brings up one).
- One worker more than the cores: the session lab's worker waits on the lab (its health and monitoring
  timers, its services, Ansible's round trips) more than it computes, and the extra worker fills that
  wait. Measured on the 2-core development machine, whole suite: 28.0 min on two workers, 21.0 min on
  three (CPU 97 % busy, each worker busy 20-21 min: the session lab's unit is now the longest path).
- Units are handed out in this order, a worker taking the next when it has two tests or fewer left:
  the session lab's first (the longest, started at once on one worker), then the quick modules (so a
  broken unit still shows within minutes, on the other workers), then modules with labs of their own
  (a few minutes each), then the slow modules, short units that even out the end.

Which module is in which unit and at which rank is known only where tests are collected (a worker): each
worker writes it to a file the controller named in its `workerinput`, before it reports its collection;
the controller's scheduler reads it when every worker has reported. `-n 0` (or `-p no:xdist`) runs the
suite in this process, in tests/suite_order.py's order.

A pytest plugin, loaded by tests/conftest.py; it does nothing where pytest-xdist is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from suite_order import ACCEPTANCE, DEPLOYED, LAB, QUICK, SLOW, module_of, module_ranks

MAX_WORKERS = 4  # more labs at once than this only contend for the disk and the machine's sshd
SESSION_LAB = "the session lab"  # the unit of every module on the `lab` fixture
GROUPS_KEY = "aifactory_suite_groups"  # workerinput: the folder workers write their units into
# The order units are handed out in, by the rank of their slowest test (tests/suite_order.py).
HAND_OUT = {QUICK: 1, LAB: 2, SLOW: 3, DEPLOYED: 4, ACCEPTANCE: 5}


def units_of(items: list[pytest.Item]) -> dict[str, dict[str, Any]]:
    """Each module's unit of work and rank: {module: {"unit": name, "rank": rank of its slowest test}}."""
    on_session_lab = {module_of(i.nodeid) for i in items if "lab" in getattr(i, "fixturenames", ())}
    return {
        module: {"unit": SESSION_LAB if module in on_session_lab else module, "rank": rank}
        for module, rank in module_ranks(items).items()
    }


def hand_out_order(unit: str, rank: int) -> int:
    return 0 if unit == SESSION_LAB else HAND_OUT[rank]


def workqueue(collection: list[str], modules: dict[str, dict[str, Any]]) -> dict[str, dict[str, bool]]:
    """The units in the order they are handed out, each with its test ids in collection order (all
    pending). A module no worker described is a unit of its own, handed out with the slow modules."""
    units: dict[str, dict[str, bool]] = {}
    order: dict[str, int] = {}
    for nodeid in collection:
        described = modules.get(module_of(nodeid), {"unit": module_of(nodeid), "rank": SLOW})
        unit = described["unit"]
        units.setdefault(unit, {})[nodeid] = False
        order[unit] = min(order.get(unit, 99), hand_out_order(unit, described["rank"]))
    ordered = sorted(units, key=lambda unit: order[unit])  # stable: collection order within a rank
    return {unit: units[unit] for unit in ordered}


def _scheduling_class() -> type:
    from xdist.scheduler import LoadScopeScheduling

    class SuiteScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """xdist's scope scheduling with the units and order above instead of one unit per module
        handed out largest first."""

        def __init__(self, config: pytest.Config, log: Any, folder: Path) -> None:
            super().__init__(config, log)
            self.folder = folder
            self.unit_of: dict[str, str] = {}

        def _split_scope(self, nodeid: str) -> str:
            return self.unit_of.get(nodeid, module_of(nodeid))

        def schedule(self) -> None:
            """xdist's first distribution, from our queue (the units read from the workers' files)."""
            assert self.collection_is_completed
            if self.collection is not None:  # the first distribution happened: top the nodes up
                for node in self.nodes:
                    self._reschedule(node)
                return
            if not self._check_nodes_have_same_collection():
                self.log("**Different tests collected, aborting run**")
                return
            self.collection = list(next(iter(self.registered_collections.values())))
            if not self.collection:
                return
            self.workqueue.update(workqueue(self.collection, self._units()))
            self.unit_of = {nodeid: unit for unit, ids in self.workqueue.items() for nodeid in ids}
            for _ in range(len(self.nodes) - len(self.workqueue)):  # more workers than units
                unused, _assigned = self.assigned_work.popitem()
                unused.shutdown()
            for node in self.nodes:
                self._assign_work_unit(node)
            for node in self.nodes:
                self._reschedule(node)  # at least two units each, where there are enough
            if not self.workqueue:
                for node in self.nodes:
                    node.shutdown()

        def _units(self) -> dict[str, dict[str, Any]]:
            modules: dict[str, dict[str, Any]] = {}
            for path in sorted(self.folder.glob("*.json")):
                modules.update(json.loads(path.read_text()))
            return modules

    return SuiteScheduling


class SuiteWorkers:
    """The controller's side: a folder for the workers' units, and the scheduler that reads it."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="aifactory-suite-units-"))

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[GROUPS_KEY] = str(self.folder)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        return _scheduling_class()(config, log, self.folder)

    def pytest_unconfigure(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class WorkerUnits:
    """A worker's side: after the suite's order is set, write each module's unit for the controller."""

    def __init__(self, folder: Path, worker: str) -> None:
        self.target = folder / f"{worker}.json"

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        partial = self.target.with_suffix(".partial")
        partial.write_text(json.dumps(units_of(items), sort_keys=True))
        os.replace(partial, self.target)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores + 1, MAX_WORKERS))


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        if config.getoption("dist", "no") != "no" and not config.getoption("collectonly"):
            config.pluginmanager.register(SuiteWorkers(), "aifactory-suite-workers")
    elif GROUPS_KEY in workerinput:
        units = WorkerUnits(Path(workerinput[GROUPS_KEY]), workerinput["workerid"])
        config.pluginmanager.register(units, "aifactory-suite-worker-units")
