"""Where the test suite's CPU goes: CPU seconds per test module and per command, for a whole run.

    sudo .venv/bin/python benchmarks/suite_cpu.py [--top 40] [--keep DIR] [-- PYTEST ARGS...]

The suite is CPU-bound on the 2-core development machine (idle 3-6 % through a run), so its wall time
is its CPU over the cores: a new lab test has to bring its CPU with it or take some out elsewhere
(issue 21's 20 minutes). This says where the CPU goes, in one run of the README's test command (or
the pytest arguments given after `--`):

- Linux process accounting (`accton`, Debian's `acct` package; root) records every process's CPU as
  it ends: the pytest workers and everything they start, including what runs on the lab's hosts
  (their sshd's sessions, Ansible's modules, services) and the Ansible controller's forks;
- a pytest plugin (this file, loaded with `-p`) writes each test's worker, start and end;
- each process is given to its worker by its parent chain, and to the test during which it started
  on that worker. Processes whose chain ends elsewhere (daemons that re-parented themselves, such as
  the lab supervisor's services) are counted as "not placed".

Printed: the total against the machine's busy time over the run (/proc/stat), CPU by command name,
and the modules by CPU (with the wall time of their tests and their largest commands). Accounting is
turned off at the end (`accton off`); the accounting file is a scratch file (removed unless --keep).
Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WINDOWS_ENV = "AIFACTORY_SUITE_CPU_WINDOWS"  # the folder the plugin writes each worker's tests into
TICKS = 100.0  # dump-acct prints CPU and elapsed times in clock ticks of 1/100 s


# --- the plugin, in each pytest process ------------------------------------------------------------


class _Windows:
    def __init__(self, folder: Path, worker: str) -> None:
        self.out = (folder / f"{worker}.jsonl").open("a")
        self.out.write(json.dumps({"worker": worker, "pid": os.getpid()}) + "\n")
        self.out.flush()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
        started = time.time()
        yield
        record = {"id": item.nodeid, "start": started, "end": time.time()}
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()


def pytest_configure(config: pytest.Config) -> None:
    folder = os.environ.get(WINDOWS_ENV)
    if folder:
        worker = getattr(config, "workerinput", {}).get("workerid", "main")
        config.pluginmanager.register(_Windows(Path(folder), worker), "aifactory-suite-cpu")


# --- the run and its analysis -----------------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    command: str
    cpu: float  # user + system seconds
    pid: int
    ppid: int  # the parent when it ended
    start: float  # epoch seconds (whole seconds: what accounting keeps)
    elapsed: float

    def alive_at(self, moment: float) -> bool:
        return self.start - 1 <= moment <= self.start + self.elapsed + 1


@dataclass(frozen=True)
class Window:
    worker_pid: int
    module: str
    start: float
    end: float


def read_processes(accounting: Path) -> list[Process]:
    """Every record of the accounting file, through Debian's `dump-acct`."""
    dumped = subprocess.run(["dump-acct", str(accounting)], capture_output=True, text=True, check=True)
    processes = []
    for line in dumped.stdout.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 15:
            continue
        started = time.mktime(time.strptime(fields[14], "%a %b %d %H:%M:%S %Y"))
        cpu = (float(fields[2]) + float(fields[3])) / TICKS
        elapsed = float(fields[4]) / TICKS
        processes.append(Process(fields[0], cpu, int(fields[9]), int(fields[10]), started, elapsed))
    return processes


def read_windows(folder: Path) -> tuple[set[int], list[Window]]:
    workers: set[int] = set()
    windows: list[Window] = []
    for path in sorted(folder.glob("*.jsonl")):
        pid = 0
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "pid" in record:
                pid = record["pid"]
                workers.add(pid)
            else:
                module = record["id"].split("::", 1)[0]
                windows.append(Window(pid, module, record["start"], record["end"]))
    return workers, windows


def place(processes: list[Process], workers: set[int], windows: list[Window]) -> dict[str, dict[str, float]]:
    """CPU seconds by module and command: each process under the worker its parent chain reaches, in
    the test that worker ran when it started (a second's slack: accounting keeps whole seconds)."""
    by_pid: dict[int, list[Process]] = collections.defaultdict(list)  # pids are reused within a run
    for process in processes:
        by_pid[process.pid].append(process)
    by_worker: dict[int, list[Window]] = collections.defaultdict(list)
    for window in windows:
        by_worker[window.worker_pid].append(window)
    placed: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
    for process in processes:
        worker = _worker_of(process, by_pid, workers)
        if worker is None:
            placed["(not placed)"][process.command] += process.cpu
        elif process.pid == worker:
            placed["(the workers themselves: in-process tests)"]["pytest worker"] += process.cpu
        else:
            module = next(
                (w.module for w in by_worker[worker] if w.start - 1 <= process.start <= w.end + 1),
                "(between tests)",
            )
            placed[module][process.command] += process.cpu
    return placed


def _worker_of(process: Process, by_pid: dict[int, list[Process]], workers: set[int]) -> int | None:
    current: Process | None = process
    for _ in range(64):  # deeper than any real chain; a cycle of reused pids ends here
        if current is None:
            return None
        if current.pid in workers:
            return current.pid
        # The parent: the process of that pid alive when this one started (a whole run reuses pids).
        started = current.start
        current = next((p for p in by_pid.get(current.ppid, ()) if p.alive_at(started)), None)
    return None


def busy_seconds() -> float:
    """The machine's busy CPU seconds so far (user, nice and system of /proc/stat's first line)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return sum(int(v) for v in fields[1:4]) / os.sysconf("SC_CLK_TCK")


def report(placed: dict[str, dict[str, float]], windows: list[Window], busy: float, top: int) -> str:
    total = sum(sum(c.values()) for c in placed.values())
    commands: collections.Counter[str] = collections.Counter()
    for by_command in placed.values():
        commands.update(by_command)
    walls: dict[str, float] = collections.defaultdict(float)
    for window in windows:
        walls[window.module] += window.end - window.start
    lines = [
        f"accounted CPU: {total / 60:.1f} min; the machine's busy time over the run: {busy / 60:.1f} min",
        "",
        "by command (CPU s, share):",
    ]
    lines += [f"  {cpu:8.1f}  {cpu / total:6.1%}  {name}" for name, cpu in commands.most_common(15)]
    lines += ["", f"by module (CPU s, wall s of its tests, its largest commands), top {top}:"]
    ranked = sorted(placed.items(), key=lambda item: -sum(item[1].values()))[:top]
    for module, by_command in ranked:
        largest = ", ".join(f"{c} {s:.0f}" for c, s in collections.Counter(by_command).most_common(3))
        lines.append(
            f"  {sum(by_command.values()):8.1f}  {walls.get(module, 0.0):7.1f}  {module}  ({largest})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=40, help="modules to print (default 40)")
    parser.add_argument("--keep", type=Path, help="keep the accounting file and the test windows here")
    parser.add_argument("--from", dest="kept", type=Path, help="analyse a run kept with --keep, run nothing")
    parser.add_argument("pytest_args", nargs="*", help="pytest's arguments (after --)")
    args = parser.parse_args(argv)
    if args.kept:
        workers, windows = read_windows(args.kept / "windows")
        busy = float((args.kept / "busy").read_text())
        print(report(place(read_processes(args.kept / "pacct"), workers, windows), windows, busy, args.top))
        return 0
    missing = [tool for tool in ("accton", "dump-acct") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        why = f"{', '.join(missing)} not installed (apt-get install acct)" if missing else "not root"
        print(f"suite_cpu: needs root and Linux process accounting: {why}", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="suite-cpu-"))
    accounting, folder = scratch / "pacct", scratch / "windows"
    accounting.touch(mode=0o600)
    folder.mkdir()
    env = {
        **os.environ,
        WINDOWS_ENV: str(folder),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])
        ),
    }
    subprocess.run(["accton", str(accounting)], check=True, capture_output=True)
    before = busy_seconds()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", Path(__file__).stem, *args.pytest_args], cwd=REPO, env=env
        )
    finally:
        busy = busy_seconds() - before
        subprocess.run(["accton", "off"], check=False, capture_output=True)
    (scratch / "busy").write_text(f"{busy:.1f}\n")
    workers, windows = read_windows(folder)
    print(report(place(read_processes(accounting), workers, windows), windows, busy, args.top))
    if args.keep:
        shutil.copytree(scratch, args.keep, dirs_exist_ok=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
