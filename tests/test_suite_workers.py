"""The suite on several workers (tests/suite_workers.py): the session lab's modules are one unit on one
worker, in the suite's order, so the lab is brought up once; every other module stays whole on one
worker; units are handed out session lab first, then quick, own-lab and slow modules. A tiny project
loads the plugin as the suite does and runs on two real xdist workers."""

from __future__ import annotations

import json
from pathlib import Path

from suite_order import DEPLOYED, LAB, QUICK, SLOW
from suite_workers import SESSION_LAB, workqueue
from tiny_project import pytest_in

CONFTEST = """
import json, os, pytest
pytest_plugins = ["suite_order", "suite_workers"]
RECORD = os.environ["SUITE_RECORD"]

def record(**entry):
    entry["worker"] = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(RECORD, "a") as out:
        out.write(json.dumps(entry) + "\\n")

@pytest.fixture(scope="session")
def lab():
    record(event="lab up")
    yield "lab"

@pytest.fixture
def deployed_lab(lab):
    return lab

@pytest.fixture(autouse=True)
def ran(request):
    record(event="ran", test=request.node.nodeid)
"""

MODULES = {
    "test_a_quick.py": "def test_q1():\n    pass\n\ndef test_q2():\n    pass\n",
    "test_b_quick.py": "def test_q3():\n    pass\n",
    "test_c_slow.py": "import pytest\npytestmark = pytest.mark.slow\n\ndef test_s1():\n    pass\n",
    "test_d_own_lab.py": "import pytest\npytestmark = pytest.mark.lab\n\ndef test_o1():\n    pass\n\n"
    "def test_o2():\n    pass\n",
    "test_e_deployed.py": "import pytest\npytestmark = pytest.mark.lab\n\n"
    "def test_d1(deployed_lab):\n    pass\n",
    "test_f_lab.py": "import pytest\npytestmark = pytest.mark.lab\n\ndef test_l1(lab):\n    pass\n\n"
    "def test_l2(lab):\n    pass\n\ndef test_l3():\n    pass\n",
}


def test_units_are_handed_out_session_lab_first_then_quick_own_lab_and_slow_modules() -> None:
    collection = [
        "tests/q.py::t1", "tests/q.py::t2", "tests/s.py::t", "tests/own.py::t",
        "tests/lab.py::t", "tests/deployed.py::t", "tests/unknown.py::t",
    ]  # fmt: skip
    modules = {
        "tests/q.py": {"unit": "tests/q.py", "rank": QUICK},
        "tests/s.py": {"unit": "tests/s.py", "rank": SLOW},
        "tests/own.py": {"unit": "tests/own.py", "rank": LAB},
        "tests/lab.py": {"unit": SESSION_LAB, "rank": LAB},
        "tests/deployed.py": {"unit": SESSION_LAB, "rank": DEPLOYED},
    }
    queue = workqueue(collection, modules)
    assert list(queue) == [SESSION_LAB, "tests/q.py", "tests/own.py", "tests/s.py", "tests/unknown.py"]
    assert list(queue[SESSION_LAB]) == ["tests/lab.py::t", "tests/deployed.py::t"]
    assert list(queue["tests/q.py"]) == ["tests/q.py::t1", "tests/q.py::t2"]
    assert not any(done for unit in queue.values() for done in unit.values())


def test_on_two_workers_the_lab_comes_up_once_and_every_module_stays_whole(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\ntestpaths = ["tests"]\nmarkers = ["lab: lab", "slow: slow"]\n'
    )
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text(CONFTEST)
    for name, text in MODULES.items():
        (tests / name).write_text(text)
    record = tmp_path / "record.jsonl"
    run = pytest_in(tmp_path, "-n", "2", SUITE_RECORD=str(record))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "10 passed" in run.stdout
    entries = [json.loads(line) for line in record.read_text().splitlines()]
    assert [e["event"] for e in entries].count("lab up") == 1
    ran = [e for e in entries if e["event"] == "ran"]
    assert {e["worker"] for e in ran} == {"gw0", "gw1"}  # both worked
    workers_of: dict[str, set[str]] = {}
    for entry in ran:
        workers_of.setdefault(entry["test"].split("::")[0], set()).add(entry["worker"])
    assert all(len(workers) == 1 for workers in workers_of.values()), workers_of
    (lab_worker,) = workers_of["tests/test_f_lab.py"]
    session_lab = [e["test"] for e in ran if e["worker"] == lab_worker]
    # the session lab's modules on one worker, the lab module before the deployed lab's
    lab_tests = [t for t in session_lab if "test_f_lab" in t or "test_e_deployed" in t]
    assert lab_tests == [
        "tests/test_f_lab.py::test_l1",
        "tests/test_f_lab.py::test_l2",
        "tests/test_f_lab.py::test_l3",
        "tests/test_e_deployed.py::test_d1",
    ]
