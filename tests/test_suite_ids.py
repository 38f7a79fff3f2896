"""The suite's id check can fail: a tiny project loads tests/suite_ids.py as the real suite does, and
a test removed, renamed or newly skipped fails the session with the id named."""

from __future__ import annotations

from pathlib import Path

import pytest
from suite_ids import compare, read_ids
from tiny_project import pytest_in

HERE = Path(__file__).resolve().parent

TESTS = """
import pytest

def test_kept():
    pass

@pytest.mark.parametrize("case", ["a b", "c#d"])
def test_cases(case):
    pass

def test_skipped_today():
    pytest.skip("no such tool here")

def test_maybe_skipped():
    import os
    if os.environ.get("SKIP_IT"):
        pytest.skip("skipped now")
"""
EXPECTED = [
    "tests/test_small.py::test_cases[a b]",
    "tests/test_small.py::test_cases[c#d]",
    "tests/test_small.py::test_kept",
    "tests/test_small.py::test_maybe_skipped",
    "tests/test_small.py::test_skipped_today",
]


def test_compare_names_missing_and_newly_skipped_ids_and_accepts_new_ones() -> None:
    shortfall = compare(
        expected=["t::a", "t::b", "t::c", "t::d"],
        allowed_skips=["t::d"],
        collected=["t::a", "t::c", "t::d", "t::new"],
        skipped=["t::c", "t::d", "t::new"],
    )
    assert shortfall.missing == ["t::b"] and shortfall.newly_skipped == ["t::c"]
    assert shortfall.lines() == [
        "test id no longer collected: t::b",
        "test id skipped (it ran when the list was made): t::c",
    ]
    assert not compare(["t::a"], [], ["t::a", "t::b"], ["t::b"])


def test_id_lists_keep_spaces_and_hashes(tmp_path: Path) -> None:
    listed = tmp_path / "ids.txt"
    listed.write_text("# a comment\n\ntests/x.py::t[a b]\ntests/x.py::t[c#d]\n")
    assert read_ids(listed) == ["tests/x.py::t[a b]", "tests/x.py::t[c#d]"]


def test_the_committed_lists_are_sorted_and_skips_are_listed_ids() -> None:
    ids = read_ids(HERE / "expected_test_ids.txt")
    skips = read_ids(HERE / "expected_skipped_ids.txt")
    assert len(ids) > 600 and ids == sorted(set(ids))
    assert set(skips) <= set(ids)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "tests").mkdir()
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    (tmp_path / "tests" / "conftest.py").write_text('pytest_plugins = ["suite_ids"]\n')
    (tmp_path / "tests" / "test_small.py").write_text(TESTS)
    (tmp_path / "tests" / "expected_test_ids.txt").write_text("\n".join(EXPECTED) + "\n")
    (tmp_path / "tests" / "expected_skipped_ids.txt").write_text("tests/test_small.py::test_skipped_today\n")
    return tmp_path


def test_a_whole_run_with_every_id_passes(project: Path) -> None:
    run = pytest_in(project)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 passed, 1 skipped" in run.stdout


def test_a_removed_test_fails_the_session_and_is_named(project: Path) -> None:
    small = project / "tests" / "test_small.py"
    small.write_text(small.read_text().replace("def test_kept", "def test_renamed"))
    run = pytest_in(project)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "4 passed, 1 skipped" in run.stdout  # every test that ran passed: the check failed it
    assert "test id no longer collected: tests/test_small.py::test_kept" in run.stdout


def test_a_newly_skipped_test_fails_the_session_and_is_named(project: Path) -> None:
    run = pytest_in(project, SKIP_IT="1")
    assert run.returncode == 1, run.stdout + run.stderr
    assert (
        "test id skipped (it ran when the list was made): tests/test_small.py::test_maybe_skipped"
        in run.stdout
    )


def test_a_narrowed_run_is_not_judged(project: Path) -> None:
    small = project / "tests" / "test_small.py"
    small.write_text(small.read_text().replace("def test_kept", "def test_renamed"))
    for narrowed in (["-k", "cases"], ["tests/test_small.py"], ["-x"], ["-m", "not lab"]):
        run = pytest_in(project, *narrowed)
        assert run.returncode in (0, 5), (narrowed, run.stdout + run.stderr)
        assert "no longer collected" not in run.stdout, narrowed
    whole = pytest_in(project, "tests")  # `pytest tests` is the whole suite
    assert whole.returncode == 1 and "no longer collected" in whole.stdout


def test_on_two_workers_every_id_passes_and_a_lost_one_fails_the_session(project: Path) -> None:
    """Under pytest-xdist the controller collects nothing itself: it judges the ids its workers report
    (tests/suite_workers.py runs the suite so)."""
    run = pytest_in(project, "-n", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 passed, 1 skipped" in run.stdout
    newly_skipped = pytest_in(project, "-n", "2", SKIP_IT="1")
    assert newly_skipped.returncode == 1, newly_skipped.stdout + newly_skipped.stderr
    assert "test id skipped (it ran when the list was made): tests/test_small.py::test_maybe_skipped" in (
        newly_skipped.stdout
    )
    small = project / "tests" / "test_small.py"
    small.write_text(small.read_text().replace("def test_kept", "def test_renamed"))
    removed = pytest_in(project, "-n", "2")
    assert removed.returncode == 1, removed.stdout + removed.stderr
    assert "test id no longer collected: tests/test_small.py::test_kept" in removed.stdout
