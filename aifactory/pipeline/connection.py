"""The edge's choice of how to reach a site's hosts: its local lab, or plain SSH from this machine
(the control host). The CLI and `aifactory up` decide it once and hand the `Connection` to the
stages; nothing below them asks which it is (docs/architecture.md)."""

from __future__ import annotations

from aifactory.connection import Connection, ssh_connection
from aifactory.lab import lab_connection, lab_is_up


def site_connection(site: str, *, lab: bool | None = None) -> Connection:
    """The site's lab when `lab` (by default: when a lab of the site is up here), else a real site's
    SSH connection from this host."""
    use_lab = lab_is_up(site) if lab is None else lab
    return lab_connection(site) if use_lab else ssh_connection()


__all__ = ["lab_is_up", "site_connection"]
