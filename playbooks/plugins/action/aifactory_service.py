# Copyright: aifactory developers. Apache-2.0.
"""Action plugin: a service or timer started or restarted under the site's service manager, in one task.

The one place roles choose the supervisor (docs: plugins/modules/aifactory_service.py). It replaces an
include of four tasks (the include, an assert, the systemd branch and the supervisor branch, one of
them always skipped) with one task, which a handler can be as well.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.aifactory.factory.plugins.plugin_utils.aifactory_host_vars import host_var

# A unit's name as systemd and the lab's supervisor take it: NAME, NAME.service, NAME.timer or a
# template instance (NAME@INSTANCE.service); never a path, an option or a shell word.
UNIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9@_.-]*")

ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "name": {"type": "str", "required": True},
    "state": {"type": "str", "choices": ["started", "restarted"], "default": "started"},
    "daemon_reload": {"type": "bool", "default": False},
    "manager": {"type": "str", "choices": ["systemd", "supervised"]},
    "command": {"type": "str"},
}

# The supervisor's `status` answers 0 for a running service (or a waiting timer), 3 for one that is
# not running, like `systemctl status` (docs/lab.md).
_STATUS_RUNNING = 0


class ActionModule(ActionBase):  # type: ignore[misc]  # ansible-core ships no type information
    """Start or restart one unit through systemd or the supervisor named by the host's variables."""

    TRANSFERS_FILES = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        task_vars = task_vars if task_vars is not None else {}
        result: dict[str, Any] = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        name: str = args["name"]
        if not UNIT_NAME.fullmatch(name):
            raise AnsibleActionFail(
                f"aifactory_service: name {name!r} is not a unit name (letters, digits, '@', '_', '.',"
                " '-'; not starting with '-', '.' or '@')"
            )
        manager = args["manager"] or str(
            host_var(self._templar, task_vars, "aifactory_service_manager", "systemd")
        )
        # What the unit is and who runs it, in the result: the deploy's record of what a full run
        # managed (aifactory/deploy/converged.py) reads them, and the converged probe asks again.
        result.update(service=name, manager=manager)
        if manager == "systemd":
            result.update(self._systemd(name, args, task_vars))
            return result
        if manager != "supervised":
            raise AnsibleActionFail(
                f"aifactory_service: aifactory_service_manager is {manager!r}; it must be systemd or"
                " supervised"
            )
        command = args["command"]
        if command is None:
            command = str(host_var(self._templar, task_vars, "aifactory_service_command", ""))
        if not command:
            raise AnsibleActionFail(
                f"aifactory_service: {name} is supervised but no supervisor command is set"
                " (aifactory_service_command, or the task's command)"
            )
        result["command"] = command
        if self._task.check_mode:
            result.update(self._supervised_check(command, name, args["state"]))
        else:
            result.update(self._supervised_run(command, name, args["state"], task_vars))
        return result

    def _systemd(self, name: str, args: dict[str, Any], task_vars: dict[str, Any]) -> dict[str, Any]:
        """`systemctl enable` and start (or restart): systemd_service, with its own check mode."""
        module_args = {
            "name": name,
            "state": args["state"],
            "enabled": True,
            "daemon_reload": args["daemon_reload"],
        }
        outcome: dict[str, Any] = self._execute_module(
            module_name="ansible.legacy.systemd_service", module_args=module_args, task_vars=task_vars
        )
        return outcome

    def _supervised_run(
        self, command: str, name: str, state: str, task_vars: dict[str, Any]
    ) -> dict[str, Any]:
        """`start` leaves a running unit alone and says so; `restart` always restarts.

        The supervisor prints one JSON line {"service", "state", "pid", "changed"}; the command runs
        as an argument vector (the command module without a shell).
        """
        verb = "restart" if state == "restarted" else "start"
        outcome: dict[str, Any] = self._execute_module(
            module_name="ansible.legacy.command",
            module_args={"argv": [command, verb, name]},
            task_vars=task_vars,
        )
        if outcome.get("failed") or outcome.get("rc", 0) != 0:
            outcome["failed"] = True
            stderr = str(outcome.get("stderr", "")).strip()
            outcome["msg"] = f"aifactory_service: {command} {verb} {name} failed" + (
                f": {stderr}" if stderr else ""
            )
            return outcome
        outcome["changed"] = _reported_change(str(outcome.get("stdout", "")))
        return outcome

    def _supervised_check(self, command: str, name: str, state: str) -> dict[str, Any]:
        """Check mode: ask the supervisor whether the unit runs, and report what a run would change.

        A `status` query changes nothing, so it runs in check mode too (the command module would skip
        it); it is quoted for the remote shell, and the name has already passed UNIT_NAME.
        """
        query = self._low_level_execute_command(shlex.join([command, "status", name]), sudoable=True)
        running = query.get("rc") == _STATUS_RUNNING
        would_change = state == "restarted" or not running
        verb = "restart" if state == "restarted" else "start"
        return {
            "changed": would_change,
            "msg": f"would {verb} {name}" if would_change else f"{name} is running",
            "status_rc": query.get("rc"),
        }


def _reported_change(stdout: str) -> bool:
    """The supervisor's `changed`, from its last JSON line; a run that printed none counts as changed."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            reply = json.loads(line)
        except ValueError:
            continue
        if isinstance(reply, dict):
            return bool(reply.get("changed", True))
    return True
