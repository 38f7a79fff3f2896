"""The environment the tests run Ansible with on this machine (real ansible-playbook, local
connection): this process's environment without Ansible settings of its own, Ansible's home and
temporary folder under the test's folder, the roles and the collection aifactory.factory (the roles'
modules, by FQCN) from this checkout, as `aifactory deploy` runs them."""

from __future__ import annotations

import os
from pathlib import Path

from aifactory.bundle.collection import source_collections_path

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"


def ansible_env(folder: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")},
        "ANSIBLE_HOME": str(folder / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(folder / "ansible-tmp"),
        "ANSIBLE_ROLES_PATH": str(PLAYBOOKS / "roles"),
        "ANSIBLE_COLLECTIONS_PATH": str(source_collections_path(PLAYBOOKS, folder / "collections")),
        "ANSIBLE_NOCOLOR": "1",
    }
