"""`aifactory-serve --forward-cpus`: the batcher runs on the named CPUs, every other thread of the
server on the rest (read back from the kernel), requests are still answered; bad lists are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aifactory.runtime.cpus import CpuSplit, parse_cpu_list

from .conftest import RuntimeSite
from .serving import BODY, PATH, start_server, wait_for_model, write_checkpoint


def test_cpu_lists_parse_like_taskset() -> None:
    assert parse_cpu_list("0") == {0}
    assert parse_cpu_list("0-2,5") == {0, 1, 2, 5}
    assert parse_cpu_list(" 3 , 1 ") == {1, 3}
    for bad in ("", "a", "2-1", "-1", "0,,1"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)


def test_a_split_must_leave_the_event_loop_a_cpu_and_name_only_allowed_ones() -> None:
    allowed = frozenset({0, 1, 2})
    assert CpuSplit.of(frozenset({0}), allowed) == CpuSplit(frozenset({0}), frozenset({1, 2}))
    with pytest.raises(ValueError, match="every CPU"):
        CpuSplit.of(allowed, allowed)
    with pytest.raises(ValueError, match="not available"):
        CpuSplit.of(frozenset({7}), allowed)


def _affinities(pid: int) -> list[frozenset[int]]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found.append(parse_cpu_list(line.split(":", 1)[1]))
    return found


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to split")
def test_the_batcher_alone_runs_on_the_forward_cpus(site: RuntimeSite, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    allowed = frozenset(os.sched_getaffinity(0))
    forward = frozenset({min(allowed)})
    write_checkpoint(site, tmp_path / "storage")
    server = start_server(
        site, tmp_path / "storage", tmp_path / "runtime", "--forward-cpus", str(min(allowed))
    )
    try:
        wait_for_model(server)
        assert server.call("POST", PATH, BODY, token=site.tokens["health"])[0] == 200
        placed = _affinities(server.process.pid)
        assert placed.count(forward) == 1, placed  # one model, one batcher
        assert all(cpus == allowed - forward for cpus in placed if cpus != forward), placed
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("cpus", ["x", "0-99999", ",".join(map(str, sorted(os.sched_getaffinity(0))))])
def test_a_bad_forward_cpu_list_is_a_usage_error(site: RuntimeSite, cpus: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aifactory.runtime.serve_cli", "--plan", str(site.plan_path), "--port", "0"]
        + ["--forward-cpus", cpus],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "--forward-cpus" in done.stderr and "Traceback" not in done.stderr


def test_a_gil_switch_interval_of_zero_is_a_usage_error(site: RuntimeSite) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aifactory.runtime.serve_cli", "--plan", str(site.plan_path)]
        + ["--gil-switch-ms", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "--gil-switch-ms" in done.stderr and "Traceback" not in done.stderr
