"""One host's health run: read the task (JSON on stdin), run the checks, print the report (JSON).

    python -m aifactory.runtime.health < task.json

The quick level imports no torch; the collective check (standard level) runs apart, through
`python -m aifactory.runtime.health.allreduce`, because every host of the pool must run it at once.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aifactory.console import DEBUG_HELP, UsageParser, run_console
from aifactory.errors import UsageError
from aifactory.runtime.health import gpu, probes
from aifactory.runtime.health.model import HostTask, Measurement

REPORT_SCHEMA = "aifactory.health-host/v1"


def run_checks(task: HostTask) -> list[Measurement]:
    """Every node-side check of `task`, in a fixed order. The bandwidth pair comes first: this host's
    iperf3 server for the peer that measures towards it, then its own measurement towards the next
    peer, so every host of the ring measures at about the same moment, before fio loads the host,
    and no server waits on a peer still busy with its other checks."""
    server = probes.start_bandwidth_server(task)
    found: list[Measurement] = []
    try:
        found += probes.tcp_bandwidth(task)
        found += probes.service_state(task)
        found += probes.disk_headroom(task)
        found += probes.memory_available()
        found += probes.link_state(task)
        found += probes.reachability(task)
        found += probes.storage_checks(task)
        found += gpu.gpu_checks(task)
        chrony = probes.chrony_offset()
        if chrony is not None:
            found.append(chrony)
    finally:
        probes.stop_bandwidth_server(server, grace_s=probes.SERVER_GRACE_S)
    return found


def host_report(task: HostTask) -> dict[str, Any]:
    started = time.time()  # the control host brackets this to bound the clock offset
    clock_start = time.monotonic()
    measurements = run_checks(task)
    return {
        "schema": REPORT_SCHEMA,
        "host": task.host,
        "hostname": socket.gethostname(),
        "level": task.level,
        "wall_start": started,
        "elapsed_s": round(time.monotonic() - clock_start, 3),
        "measurements": [m.as_dict() for m in measurements],
    }


def main(argv: Sequence[str] | None = None) -> int:
    return run_console(_run, argv, log_format=None)


def _run(arguments: list[str]) -> int:
    parser = UsageParser(
        prog="python -m aifactory.runtime.health",
        description="Run this host's health checks (the task as JSON) and print the report as JSON.",
    )
    parser.add_argument("--task", type=Path, help="the task file (default: standard input)")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(arguments)
    task = read_task(args.task)
    print(json.dumps(host_report(task), sort_keys=True))
    return 0


def read_task(path: Path | None) -> HostTask:
    where = str(path) if path else "standard input"
    try:
        text = path.read_text() if path else sys.stdin.read()
    except OSError as exc:
        raise UsageError(
            f"cannot read the task {where}: {exc.strerror}", hint="aifactory health writes it"
        ) from exc
    try:
        return HostTask.from_dict(json.loads(text))
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"the task in {where} is not a health task: {exc}") from exc
