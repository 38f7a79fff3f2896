"""What a lab site's front door needs before HAProxy's health checks find its servers up (each server is
checked over TLS with the front door's identity, on /healthz): a champion model on the site's storage and
each serving node's certificate from the site CA. The day-2 lab tests (replace, resize, upgrade) set their
own labs up this way, and read the servers' state as the lifecycle commands read it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from waiting import wait_for

REPO = Path(__file__).resolve().parents[1]


def _front_door_lab() -> Any:
    name = "aifactory_front_door_lab"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests/runtime/test_front_door_lab.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def serve_behind_the_front_door(state_home: Path, site: str, spec: Path, plan: Any) -> None:
    """A signed champion and a server certificate for every backend `plan`'s front door names (give the
    largest plan the lab will run: a host added later needs its certificate too)."""
    fronted = _front_door_lab()
    runtime_dir = state_home / site / "runtime"
    fronted._signed_model(state_home / site / "lab" / "storage" / "share", runtime_dir)
    for backend in plan.front_door.backends:
        fronted._cli(
            state_home,
            "token", "cert", str(spec), "--server", backend.name, "--address", backend.address,
            "-o", str(runtime_dir / "server-certs"),
        )  # fmt: skip


def servers_up(site: str) -> set[str]:
    """The front door's servers HAProxy's health checks find up, read through HAProxy's runtime API on
    the control host as `upgrade`, `replace` and `resize` read it."""
    from aifactory.frontdoor.runtime_api import RuntimeApi
    from aifactory.lifecycle.site_parts import ADMIN_SOCKET, BACKEND, ControlHostChannel
    from aifactory.pipeline.connection import site_connection

    api = RuntimeApi(ADMIN_SOCKET, channel=ControlHostChannel(site_connection(site)))
    return {s.name for s in api.servers(BACKEND) if s.takes_new_connections}


def wait_every_server_up(site: str, plan: Any) -> None:
    serving = {b.name for b in plan.front_door.backends}
    wait_for(lambda: servers_up(site) == serving, what="every server up at the front door", timeout=120)
