# Copyright: aifactory developers. Apache-2.0.
"""Controller side, for the collection's action plugins: a host variable the site's Connection put in
the inventory (aifactory_service_manager, aifactory_packages_preinstalled...), read the one way.

Task variables reach an action plugin untemplated (a host variable may be a Jinja expression over
others), so the value is templated first; a variable that is unset, or templates to nothing, is the
default.
"""

from __future__ import annotations

from typing import Any


def host_var(templar: Any, task_vars: dict[str, Any], key: str, default: Any) -> Any:
    """The host variable `key` templated with the task's variables, or `default`."""
    value = templar.template(task_vars.get(key, default))
    return default if value is None else value
