"""Backup and restore of the control host: a site's state folder (keys, allocations, logs and their
signed heads, reports, health runs, provision state, bundle trust) in one encrypted, signed file
(docs/operations.md)."""

from __future__ import annotations

from aifactory.backup.contents import CACHE_NAMES, LEFT_OUT
from aifactory.backup.envelope import NAMESPACE, verify_backup
from aifactory.backup.operations import (
    BackupResult,
    RestoreResult,
    backup_site,
    holds_state,
    restore_backup,
    site_backup_key,
    write_backup,
)

__all__ = [
    "CACHE_NAMES",
    "LEFT_OUT",
    "NAMESPACE",
    "BackupResult",
    "RestoreResult",
    "backup_site",
    "holds_state",
    "restore_backup",
    "site_backup_key",
    "verify_backup",
    "write_backup",
]
