"""Quick modules run first, then modules with slow tests, then modules with lab tests, then modules
on the deployed lab, then acceptance modules; each module stays whole and in file order
(tests/suite_order.py, loaded by a tiny project as the suite does)."""

from __future__ import annotations

from pathlib import Path

from tiny_project import pytest_in

MODULES = {
    "test_00_acceptance.py": (
        "import pytest\n@pytest.mark.acceptance\ndef test_long(deployed_lab):\n    pass\n"
    ),
    "test_0_deployed.py": "import pytest\n@pytest.mark.lab\ndef test_d(deployed_lab):\n    pass\n",
    "test_a_lab.py": "import pytest\n@pytest.mark.lab\ndef test_z():\n    pass\ndef test_a():\n    pass\n",
    "test_b_slow.py": "import pytest\npytestmark = pytest.mark.slow\n\ndef test_b():\n    pass\n",
    "test_c_quick.py": "def test_y():\n    pass\n\ndef test_x():\n    pass\n",
}


def test_modules_run_quick_then_slow_then_lab_each_in_file_order(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\ntestpaths = ["tests"]\n'
        'markers = ["lab: lab", "slow: slow", "acceptance: long"]\n'
    )
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text(
        'import pytest\npytest_plugins = ["suite_order"]\n\n@pytest.fixture\ndef deployed_lab():\n    pass\n'
    )
    for name, text in MODULES.items():
        (tests / name).write_text(text)
    run = pytest_in(tmp_path, "--collect-only", "-q")
    assert run.returncode == 0, run.stdout + run.stderr
    assert [line for line in run.stdout.splitlines() if "::" in line] == [
        "tests/test_c_quick.py::test_y",
        "tests/test_c_quick.py::test_x",
        "tests/test_b_slow.py::test_b",
        "tests/test_a_lab.py::test_z",
        "tests/test_a_lab.py::test_a",
        "tests/test_0_deployed.py::test_d",
        "tests/test_00_acceptance.py::test_long",
    ]
