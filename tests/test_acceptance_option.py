"""Tests marked `acceptance` are skipped, with the reason, unless --acceptance is given
(tests/acceptance.py, loaded by a tiny project as the suite does)."""

from __future__ import annotations

from pathlib import Path

from tiny_project import pytest_in

MODULE = (
    "import pytest\n"
    "@pytest.mark.acceptance\n"
    "def test_long():\n    assert False, 'ran'\n"
    "def test_short():\n    pass\n"
)


def _run(tmp_path: Path, *options: str, environment: dict[str, str] | None = None) -> str:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\ntestpaths = ["tests"]\nmarkers = ["acceptance: long"]\n'
        'addopts = "--strict-markers -rs"\n'
    )
    tests = tmp_path / "tests"
    tests.mkdir(exist_ok=True)
    (tests / "conftest.py").write_text('pytest_plugins = ["acceptance"]\n')
    (tests / "test_module.py").write_text(MODULE)
    run = pytest_in(tmp_path, *options, **(environment or {}))
    return run.stdout + run.stderr


def test_acceptance_tests_are_skipped_with_the_way_to_run_them(tmp_path: Path) -> None:
    out = _run(tmp_path)
    assert "1 passed, 1 skipped" in out, out
    assert "give --acceptance" in out, out


def test_the_option_or_the_environment_runs_them(tmp_path: Path) -> None:
    for options, environment in ((("--acceptance",), None), ((), {"AIFACTORY_ACCEPTANCE": "1"})):
        out = _run(tmp_path, *options, environment=environment)
        assert "1 failed, 1 passed" in out and "AssertionError: ran" in out, out
