#!/usr/bin/python
# Copyright: aifactory developers. Apache-2.0.
"""Ansible module: read what aifactory manages on a host, changing nothing."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: aifactory_host_state
short_description: Read the state of the files, services and packages aifactory manages on a host
description:
  - Reads, and never changes, the state of the paths, services and packages that a full
    C(aifactory deploy) run managed on this host, so that the controller can tell whether the host
    still matches that run (docs/deploy.md, "Converged hosts").
  - For each path - its type, owner, group and mode; a regular file's SHA-256; a link's target.
    A path that does not exist is reported as absent.
  - For each service - whether it runs (one C(is-active) of systemd's, or the lab's supervisor's).
  - For each package - its installed version (dpkg), or absent.
options:
  paths:
    description: Absolute paths to read.
    type: list
    elements: str
    default: []
  services:
    description: Service names to ask about.
    type: list
    elements: str
    default: []
  service_command:
    description: The lab supervisor (C(aifactory-service)); empty means systemd (C(systemctl)).
    type: str
    default: ""
  packages:
    description: Debian package names.
    type: list
    elements: str
    default: []
author: aifactory developers
"""

EXAMPLES = r"""
- name: Read the managed state
  aifactory.factory.aifactory_host_state:
    paths: [/etc/aifactory/runtime.yaml, /opt/aifactory/current]
    services: [aifactory-serve]
    service_command: /run/aifactory-lab/bin/aifactory-service
"""

RETURN = r"""
state:
  description: paths, services and packages as read, keyed by name.
  returned: always
  type: dict
"""

import os
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.aifactory.factory.plugins.module_utils.aifactory_digests import sha256_file


def read_path(path):
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return {"type": "absent"}
    entry = {"uid": info.st_uid, "gid": info.st_gid, "mode": "%04o" % stat.S_IMODE(info.st_mode)}
    if stat.S_ISLNK(info.st_mode):
        entry.update(type="link", target=os.readlink(path))
    elif stat.S_ISDIR(info.st_mode):
        entry["type"] = "directory"
    elif stat.S_ISREG(info.st_mode):
        entry.update(type="file", sha256=sha256_file(path))
    else:
        entry["type"] = "other"
    return entry


def read_services(module, names, command):
    """One `is-active` for every service (systemctl's, or the lab supervisor's that answers alike):
    a word per unit, in order; its exit code only says whether any is active. The states that
    `is-active --quiet` takes as running (active, reloading) count as running. An answer that cannot
    be read says not running, so the controller gives the host a full run rather than trust it."""
    if not names:
        return {}
    _rc, out, _err = module.run_command([command or "systemctl", "is-active", "--"] + list(names))
    words = out.split()
    if len(words) != len(names):
        return dict.fromkeys(names, "not running")
    return {
        name: ("running" if word in ("active", "reloading") else "not running")
        for name, word in zip(names, words, strict=True)
    }


def read_packages(module, names):
    if not names:
        return {}
    found = dict.fromkeys(names, "absent")
    rc, out, _err = module.run_command(
        ["dpkg-query", "--show", "--showformat=${Package} ${db:Status-Status} ${Version}\\n"] + list(names)
    )
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "installed":
            found[parts[0]] = parts[2]
    return found


def main():
    module = AnsibleModule(
        argument_spec={
            "paths": {"type": "list", "elements": "str", "default": []},
            "services": {"type": "list", "elements": "str", "default": []},
            "service_command": {"type": "str", "default": ""},
            "packages": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    params = module.params
    bad = [p for p in params["paths"] if not os.path.isabs(p)]
    if bad:
        module.fail_json(msg="paths must be absolute: %s" % ", ".join(bad))
    state = {
        "paths": {path: read_path(path) for path in sorted(set(params["paths"]))},
        "services": read_services(module, sorted(set(params["services"])), params["service_command"]),
        "packages": read_packages(module, sorted(set(params["packages"]))),
    }
    module.exit_json(changed=False, state=state)


if __name__ == "__main__":
    main()
