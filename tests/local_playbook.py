"""A play of one action's tasks run by real ansible-playbook on this machine (local connection), each
task's registered result kept: how the tests of the collection's actions see what the action did."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ansible_env import ansible_env

ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))


def action_task(action: str, label: str, args: dict[str, Any]) -> dict[str, Any]:
    """A task of `action` (FQCN) whose result is registered under its label; its failure is kept."""
    return {"name": label, action: args, "register": f"r_{label}", "ignore_errors": True}


def run_local_playbook(
    folder: Path, name: str, tasks: list[dict[str, Any]], host_vars: dict[str, Any], *flags: str
) -> dict[str, dict[str, Any]]:
    """Run `tasks` on localhost with `host_vars` (and ansible-playbook's `flags`, such as --check);
    each task's result by its label."""
    labels = [t["name"] for t in tasks]
    keep = {
        "name": "keep the results",
        "ansible.builtin.copy": {
            "content": "{{ {" + ", ".join(f"'{lb}': r_{lb}" for lb in labels) + "} | to_json }}",
            "dest": str(folder / f"{name}.json"),
            "mode": "0644",
        },
        "check_mode": False,
    }
    play = [
        {
            "name": name,
            "hosts": "localhost",
            "gather_facts": False,
            "vars": host_vars,
            "tasks": [*tasks, keep],
        }
    ]
    playbook = folder / f"{name}.yml"
    playbook.write_text(json.dumps(play))
    done = run_playbook_here(folder, playbook, *flags)
    assert done.returncode == 0, done.stdout + done.stderr
    results: dict[str, dict[str, Any]] = json.loads((folder / f"{name}.json").read_text())
    return results


def run_playbook_here(folder: Path, playbook: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """ansible-playbook `playbook` on localhost (local connection, this Python), with `flags`; the
    collection found as a deploy finds it (ansible_env), its output captured and its status kept."""
    argv = [ANSIBLE_PLAYBOOK, "-i", "localhost,", "-c", "local", *flags, str(playbook)]
    argv += ["-e", json.dumps({"ansible_python_interpreter": sys.executable})]
    return subprocess.run(
        argv, capture_output=True, text=True, env=ansible_env(folder), timeout=300, check=False
    )
