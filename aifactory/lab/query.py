"""`lab status`: the live state of a site's lab."""

from __future__ import annotations

from aifactory.lab.layout import LabLayout
from aifactory.lab.status import LabStatus, read_status


def lab_status(site_name: str) -> LabStatus:
    """Hosts, addresses, sshd and BMC state, and the generated access files of a site's lab."""
    return read_status(site_name, LabLayout.locate(site_name))
