#!/usr/bin/python
# Copyright: aifactory developers. Apache-2.0.
"""Documentation of the aifactory_service action (plugins/action/aifactory_service.py does the work)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: aifactory_service
short_description: Start or restart a service or timer under the site's service manager, in one task
description:
  - The one place roles choose the supervisor. A role writes its unit file (NAME.service, and
    NAME.timer for periodic work) as it would for systemd, then runs this action with the unit's
    name and the state wanted; a handler can be this action too.
  - With C(systemd) (real hosts) it runs C(ansible.builtin.systemd_service) with I(enabled=true)
    (C(systemctl enable --now), or a restart), with systemd_service's own check mode.
  - With C(supervised) (the lab) it runs the supervisor's C(start) or C(restart) as an argument
    vector, without a shell; C(start) leaves a running unit alone and reports changed false. In check
    mode it asks the supervisor's C(status) (which changes nothing) and reports a change when the
    unit is not running, or when a restart is asked for.
  - The manager and the supervisor's command come from the host's variables
    C(aifactory_service_manager) and C(aifactory_service_command) (the site's Connection, written
    into the inventory), unless the task names them.
  - One task per unit where an include took four (the include, an argument check and both managers'
    branches, one of them always skipped); see docs/deploy.md, section Fewer, heavier tasks.
options:
  name:
    description:
      - The unit, as NAME (a service), NAME.service, NAME.timer or NAME@INSTANCE.service.
      - Letters, digits, C(@), C(_), C(.) and C(-), not starting with C(-), C(.) or C(@); anything
        else is refused before the host is touched.
    type: str
    required: true
  state:
    description: started (start when not running) or restarted (always restart).
    type: str
    choices: [started, restarted]
    default: started
  daemon_reload:
    description: With systemd, reload unit files first (after the calling role changed one).
    type: bool
    default: false
  manager:
    description:
      - systemd on real hosts; supervised where the lab's supervisor runs the units.
      - Defaults to the host's C(aifactory_service_manager), else systemd.
    type: str
    choices: [systemd, supervised]
  command:
    description:
      - The supervisor's command on the host (required when supervised).
      - Defaults to the host's C(aifactory_service_command).
    type: str
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author: aifactory developers
"""

EXAMPLES = r"""
- name: Munge | run | munged running
  aifactory.factory.aifactory_service:
    name: munge

- name: Loop_timer | handler | restart the timers
  aifactory.factory.aifactory_service:
    name: aifactory-loop-{{ item.model }}.timer
    state: restarted
    daemon_reload: true
  loop: "{{ loop_timer_loops }}"
"""

RETURN = r"""
service:
  description: The unit's name, as given (what the deploy records as a service the host runs).
  type: str
  returned: always
manager:
  description: The service manager used, systemd or supervised.
  type: str
  returned: always
command:
  description: The supervisor's command.
  type: str
  returned: when supervised
changed:
  description: Whether the unit was (or, in check mode, would be) started or restarted.
  type: bool
  returned: always
stdout:
  description: The supervisor's JSON line (supervised, not in check mode).
  type: str
  returned: when supervised
status_rc:
  description: The supervisor's status exit code in check mode (0 running, 3 not running).
  type: int
  returned: when supervised in check mode
"""
