#!/usr/bin/python
# Copyright: aifactory developers. Apache-2.0.
"""Documentation of the aifactory_packages action (plugins/action/aifactory_packages.py does the work)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: aifactory_packages
short_description: Install a role's packages from the bundle's apt repository, or check preinstalled ones
description:
  - The one place roles choose between installing and checking their packages.
  - On a host whose packages are installed by aifactory (the default) it runs
    C(ansible.builtin.apt) with I(state=present) and without updating the cache, from the sources
    the bundle role configured (the bundle's signed apt repository), with apt's own check mode.
  - On a host whose packages are preinstalled (C(aifactory_packages_preinstalled), from the site's
    Connection; a golden image, or the lab's hosts that share the machine's C(/usr)) it asks
    C(dpkg-query) for each package's status and fails, naming them, when any is not installed; it
    installs nothing and reports no change. The query changes nothing, so it runs in check mode too.
  - One task per install where a role had two (the apt task and a dpkg-query check, one of them
    always skipped); see docs/deploy.md, section Fewer, heavier tasks.
options:
  names:
    description:
      - The packages, as Debian names (lower-case letters, digits, C(+), C(-) and C(.), starting with a
        letter or digit); anything else is refused before the host is touched.
    type: list
    elements: str
    required: true
  preinstalled:
    description:
      - Check the packages instead of installing them.
      - Defaults to the host's C(aifactory_packages_preinstalled), else false.
    type: bool
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author: aifactory developers
"""

EXAMPLES = r"""
- name: Munge | install | package from the bundle's apt repository (preinstalled, checked)
  aifactory.factory.aifactory_packages:
    names: [munge]
"""

RETURN = r"""
packages:
  description: The packages, as given.
  type: list
  elements: str
  returned: always
preinstalled:
  description: Whether they were checked (true) or installed with apt (false).
  type: bool
  returned: always
missing:
  description: The preinstalled packages that are not installed (the task failed).
  type: list
  elements: str
  returned: when preinstalled packages are missing
changed:
  description: Whether apt installed (or, in check mode, would install) a package; never when checked.
  type: bool
  returned: always
"""
