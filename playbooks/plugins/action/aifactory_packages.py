# Copyright: aifactory developers. Apache-2.0.
"""Action plugin: a role's Debian packages installed from the bundle's apt repository, or checked where
the host's packages are preinstalled, in one task.

The one place roles choose between installing and checking (docs: plugins/modules/aifactory_packages.py).
It replaces a pair of tasks per install (ansible.builtin.apt, and a dpkg-query command for preinstalled
hosts, one of them always skipped) with one task; the install itself is ansible-core's apt module.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible_collections.aifactory.factory.plugins.plugin_utils.aifactory_host_vars import host_var

# A Debian package name (Debian Policy 5.6.7): lower-case letters, digits, '+', '-' and '.', at least
# two characters, starting with a letter or digit; never an option, a path or a shell word.
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")

ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "names": {"type": "list", "elements": "str", "required": True},
    "preinstalled": {"type": "bool"},
}

# dpkg-query's status word of a package whose files are all in place.
_INSTALLED = "installed"


class ActionModule(ActionBase):  # type: ignore[misc]  # ansible-core ships no type information
    """Install the packages with apt, or, on a host whose packages are preinstalled, check them."""

    TRANSFERS_FILES = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        task_vars = task_vars if task_vars is not None else {}
        result: dict[str, Any] = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        names: list[str] = list(args["names"])
        refused = [name for name in names if not PACKAGE_NAME.fullmatch(name)]
        if refused:
            raise AnsibleActionFail(
                f"aifactory_packages: {', '.join(repr(n) for n in refused)} is not a Debian package"
                " name (lower-case letters, digits, '+', '-' and '.', starting with a letter or digit)"
            )
        if not names:
            raise AnsibleActionFail("aifactory_packages: names is empty")
        preinstalled = args["preinstalled"]
        if preinstalled is None:
            preinstalled = host_var(self._templar, task_vars, "aifactory_packages_preinstalled", False)
        preinstalled = boolean(preinstalled, strict=False)
        result.update(packages=names, preinstalled=preinstalled)
        if preinstalled:
            result.update(self._check_preinstalled(names))
        else:
            result.update(self._install(names, task_vars))
        return result

    def _install(self, names: list[str], task_vars: dict[str, Any]) -> dict[str, Any]:
        """apt from the host's configured sources (the bundle's repository), with apt's own check mode."""
        outcome: dict[str, Any] = self._execute_module(
            module_name="ansible.legacy.apt",
            module_args={"name": names, "state": "present", "update_cache": False},
            task_vars=task_vars,
        )
        return outcome

    def _check_preinstalled(self, names: list[str]) -> dict[str, Any]:
        """dpkg-query's status of each package; a missing or half-installed one fails the task.

        The query changes nothing, so it runs in check mode too; the names have passed PACKAGE_NAME
        and are quoted for the remote shell all the same.
        """
        query = self._low_level_execute_command(
            shlex.join(["dpkg-query", "--show", "--showformat=${Package}\t${db:Status-Status}\n", *names]),
            sudoable=True,
        )
        status = _statuses(str(query.get("stdout", "")))
        missing = [name for name in names if status.get(name) != _INSTALLED]
        if missing:
            return {
                "failed": True,
                "changed": False,
                "missing": missing,
                "msg": (
                    f"aifactory_packages: not installed on this host: {', '.join(missing)} (its packages"
                    " are preinstalled, aifactory_packages_preinstalled, so they are checked, not"
                    " installed: install them in the host's image, or set"
                    " aifactory_packages_preinstalled false to install them from the bundle)"
                ),
            }
        return {"changed": False, "msg": f"preinstalled: {', '.join(names)}"}


def _statuses(stdout: str) -> dict[str, str]:
    """dpkg-query's `NAME<TAB>STATUS` lines as a mapping (an architecture suffix dropped)."""
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        name, _, status = line.partition("\t")
        found[name.split(":", 1)[0]] = status.strip()
    return found
