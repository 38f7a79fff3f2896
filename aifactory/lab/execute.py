"""`lab exec`: run a command on a lab host (the control host by default), as an admin would there:
in the host's network, mount and UTS namespaces, with the lab's Ansible config, inventory and ssh
config in its environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from aifactory.errors import LabError, UsageError
from aifactory.lab.hosts import enter_argv
from aifactory.lab.query import lab_status
from aifactory.lab.status import LabStatus


def lab_env(status: LabStatus) -> dict[str, str]:
    """The variables `lab exec` adds: Ansible's config, the inventory, the ssh config and the state home."""
    env = {
        "ANSIBLE_CONFIG": status.paths["ansible_cfg"],
        "ANSIBLE_INVENTORY": status.paths["inventory"],
        "AIFACTORY_LAB_SITE": status.site,
        "AIFACTORY_LAB_SSH_CONFIG": status.paths["ssh_config"],
        "AIFACTORY_LAB_INVENTORY": status.paths["inventory"],
        "AIFACTORY_STATE_HOME": str(Path(status.root).parent.parent),
    }
    if status.secrets:
        env["AIFACTORY_PASSPHRASE_FILE"] = status.secrets["passphrase_file"]
    return env


def path_with_tools(path: str) -> str:
    """Put this Python's bin folder (ansible, aifactory) first, then the system's."""
    parts = [
        str(Path(sys.executable).parent),
        *path.split(os.pathsep),
        "/usr/local/sbin",
        "/usr/sbin",
        "/sbin",
    ]
    return os.pathsep.join(dict.fromkeys(p for p in parts if p))


def lab_command(
    site_name: str, argv: Sequence[str], host: str | None = None, *, env: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The full argv and environment that run `argv` on a lab host, for callers that start the
    process themselves (e.g. to stream its output with subprocess.Popen)."""
    if not argv:
        raise UsageError("lab exec needs a command", hint="aifactory lab exec SITE -- CMD ...")
    status = lab_status(site_name)
    if status.state not in ("up", "degraded"):
        first = f"aifactory lab down {site_name}` and `" if status.state != "down" else ""
        raise LabError(
            f"the lab of site {site_name!r} is not up ({status.state})",
            hint=f"run `{first}aifactory lab up SITE.yaml` first",
        )
    target = host or status.control_host
    if target is None:
        raise UsageError(f"site {site_name!r} has no control host", hint="pass --host NAME")
    try:
        record = status.host(target)
    except KeyError:
        known = ", ".join(h.name for h in status.hosts)
        raise UsageError(f"no lab host {target!r} in site {site_name!r}", hint=f"hosts: {known}") from None
    if not record.anchor.running():
        raise LabError(
            f"lab host {target} is not running", hint="run `aifactory lab down` and `lab up` again"
        )
    full_env = {**os.environ, **lab_env(status), **(env or {})}
    full_env["PATH"] = path_with_tools(full_env.get("PATH", ""))
    full_env["HOSTNAME"] = target
    return enter_argv(record.anchor.pid) + list(argv), full_env


def lab_exec(
    site_name: str,
    argv: Sequence[str],
    host: str | None = None,
    *,
    capture: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` on a lab host and return the finished process (output captured unless capture=False)."""
    full_argv, full_env = lab_command(site_name, argv, host, env=env)
    return subprocess.run(
        full_argv,
        env=full_env,
        cwd="/",
        text=True,
        check=False,
        capture_output=capture,
        timeout=timeout,
        input=input_text,
    )
