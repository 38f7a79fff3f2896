"""The suite keeps its tests: every id in tests/expected_test_ids.txt must still be collected, and none
of them may be skipped unless tests/expected_skipped_ids.txt lists it (what this machine skipped when
the list was made: no `opa` binary, root reads any file mode).

A pytest plugin, loaded by tests/conftest.py (on xdist's controller when the suite runs on workers,
tests/suite_workers.py). After a run of the whole suite (no paths, -k, -m, --deselect, --lf or -x
narrowing it), the session fails and names each missing or newly skipped id.
New ids are welcome (add them to the list when convenient). A test renamed or removed on purpose:
regenerate the list in the same commit and say why in the commit message:

    .venv/bin/pytest --collect-only -q | grep '::' | LC_ALL=C sort > tests/expected_test_ids.txt
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

EXPECTED_IDS = "expected_test_ids.txt"  # in <rootdir>/tests
EXPECTED_SKIPS = "expected_skipped_ids.txt"


def read_ids(path: Path) -> list[str]:
    """Ids in a list file: one a line (ids may hold spaces and `#`); blank lines and lines that
    start with `#` are ignored."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@dataclass(frozen=True)
class Shortfall:
    missing: list[str] = field(default_factory=list)  # expected, not collected
    newly_skipped: list[str] = field(default_factory=list)  # expected to run, skipped

    def __bool__(self) -> bool:
        return bool(self.missing or self.newly_skipped)

    def lines(self) -> list[str]:
        out = [f"test id no longer collected: {test_id}" for test_id in self.missing]
        out += [
            f"test id skipped (it ran when the list was made): {test_id}" for test_id in self.newly_skipped
        ]
        return out


def compare(
    expected: Iterable[str], allowed_skips: Iterable[str], collected: Iterable[str], skipped: Iterable[str]
) -> Shortfall:
    """What the run lost against the expected ids (ids the run added are fine)."""
    expected_set, collected_set, allowed = set(expected), set(collected), set(allowed_skips)
    return Shortfall(
        missing=sorted(expected_set - collected_set),
        newly_skipped=sorted((set(skipped) & expected_set) - allowed),
    )


def _whole_tree(config: pytest.Config) -> bool:
    """The paths given are exactly the configured testpaths (`pytest tests` is the whole suite)."""
    given = {(config.invocation_params.dir / arg).resolve() for arg in config.args}
    configured = {(config.rootpath / path).resolve() for path in config.getini("testpaths")}
    return bool(given) and given == configured


class SuiteIds:
    """Records what the session collected and skipped; judges it at the end of a whole-suite run."""

    def __init__(self, config: pytest.Config, lists: Path) -> None:
        self.lists = lists
        self.collected: list[str] = []
        self.skipped: set[str] = set()
        self.narrowed = self._narrowed_by_options(config)
        self.shortfall = Shortfall()

    @staticmethod
    def _narrowed_by_options(config: pytest.Config) -> str | None:
        """Why this run is not the whole suite, or None."""
        if config.args_source == pytest.Config.ArgsSource.ARGS and not _whole_tree(config):
            return "paths given on the command line"
        option = config.option
        for name, flag in (
            ("keyword", "-k"),
            ("markexpr", "-m"),
            ("deselect", "--deselect"),
            ("lf", "--lf"),
            ("stepwise", "--sw"),
            ("maxfail", "-x/--maxfail"),
            ("collectonly", "--collect-only"),
        ):
            if getattr(option, name, None):
                return f"{flag} given"
        return None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.collected = [item.nodeid for item in items]

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: object, ids: list[str]) -> None:
        """On several workers (tests/suite_workers.py) the controller collects nothing itself: every
        worker collects the whole suite and reports its ids here."""
        self.collected = list(ids)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.narrowed = self.narrowed or "tests deselected"

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped.add(report.nodeid)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.narrowed or session.shouldstop or session.shouldfail:
            return
        self.shortfall = compare(
            read_ids(self.lists / EXPECTED_IDS),
            read_ids(self.lists / EXPECTED_SKIPS),
            self.collected,
            self.skipped,
        )
        if self.shortfall and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.shortfall:
            return
        terminalreporter.section(f"test ids lost against tests/{EXPECTED_IDS}", red=True)
        for line in self.shortfall.lines():
            terminalreporter.line(line, red=True)
        terminalreporter.line("(see tests/suite_ids.py: a removal or a new skip must be deliberate)")


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller sees every worker's ids and reports, and judges
    config.pluginmanager.register(SuiteIds(config, config.rootpath / "tests"), "aifactory-suite-ids")
