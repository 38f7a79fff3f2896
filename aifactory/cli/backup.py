"""`aifactory backup` and `aifactory restore`: the control host's state folder in one encrypted, signed
file, and back (aifactory.backup, docs/operations.md).

The passphrase comes from --passphrase-file, AIFACTORY_PASSPHRASE_FILE or a prompt (asked twice for a
backup), never from the command line; restore asks for it only once the file's signature verified.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aifactory.backup import BackupResult, RestoreResult, backup_site, restore_backup
from aifactory.cli import progress
from aifactory.cli.output import emit_json
from aifactory.errors import BackupError
from aifactory.secrets import read_passphrase
from aifactory.spec.reference import resolve_site
from aifactory.state import SiteState, state_home

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "backup": "aifactory backup lab -o /media/offline/lab-20261202.aifbackup --passphrase-file ~/.pass",
    "restore": "aifactory restore /media/offline/lab-20261202.aifbackup --trust /secure/backup_signers",
}
_PASSPHRASE_HELP = "file holding the backup's passphrase (default: $AIFACTORY_PASSPHRASE_FILE, else a prompt)"


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    backup = subparsers.add_parser(
        "backup",
        parents=[common],
        allow_abbrev=False,
        help="back the site's state folder up into one encrypted, signed file",
    )
    backup.add_argument("site", help="site name, or its site spec (YAML)")
    backup.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="the backup file to write (new)"
    )
    backup.add_argument("--passphrase-file", help=_PASSPHRASE_HELP)
    backup.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another changing command on the site to finish",
    )
    backup.set_defaults(handler=cmd_backup)

    restore = subparsers.add_parser(
        "restore",
        parents=[common],
        allow_abbrev=False,
        help="verify, decrypt and restore a backup into the site's state folder",
    )
    restore.add_argument("file", help="a file written by `aifactory backup`")
    restore.add_argument(
        "--trust",
        required=True,
        metavar="ALLOWED_SIGNERS",
        help="the backup key's allowed_signers, kept off the control host (<state>/backup/allowed_signers)",
    )
    restore.add_argument("--passphrase-file", help=_PASSPHRASE_HELP)
    restore.add_argument(
        "--state-home",
        metavar="DIR",
        help="restore into DIR/<site> (default: $AIFACTORY_STATE_HOME, else ~/.local/state/aifactory)",
    )
    restore.add_argument(
        "--force",
        action="store_true",
        help="restore over a site state that holds something (it is kept beside as <site>.replaced-<time>)",
    )
    restore.set_defaults(handler=cmd_restore)


def cmd_backup(args: argparse.Namespace) -> int:
    site = resolve_site(args.site).name
    folder = state_home() / site
    if not folder.is_dir():
        raise BackupError(
            f"site {site!r} has no state folder at {folder}: nothing to back up",
            code="no-state",
            hint="check the site name, and AIFACTORY_STATE_HOME",
        )
    with progress.shown(args, "backup") as shown:
        result = backup_site(
            SiteState.for_site(site),
            Path(args.output),
            passphrase=lambda: read_passphrase(args.passphrase_file, confirm=True),
            wait=args.wait,
            progress=shown,
        )
    if args.format == "json":
        emit_json(result.as_dict())
    else:
        print(_backup_text(result))
    return 0


def _backup_text(result: BackupResult) -> str:
    lines = [
        f"backed up site '{result.site}': {result.files:,} files ({result.state_bytes:,} bytes) in "
        f"{result.file} ({result.bytes:,} bytes), encrypted and signed by {result.signer} "
        f"({result.fingerprint})",
        f"  sha256 {result.sha256}",
    ]
    if result.left_out:
        lines.append(f"  left out (made again when needed): {', '.join(result.left_out)}")
    lines += [f"  skipped {path}: {what}" for path, what in result.skipped]
    lines.append(
        f"  keep a copy of {result.allowed_signers} off this host: `aifactory restore` needs it (--trust)"
    )
    return "\n".join(lines)


def cmd_restore(args: argparse.Namespace) -> int:
    with progress.shown(args, "restore") as shown:
        result = restore_backup(
            Path(args.file),
            trust=Path(args.trust),
            passphrase=lambda: read_passphrase(args.passphrase_file),
            home=Path(args.state_home) if args.state_home else None,
            force=args.force,
            progress=shown,
        )
    if args.format == "json":
        emit_json(result.as_dict())
    else:
        print(_restore_text(result))
    return 0


def _restore_text(result: RestoreResult) -> str:
    lines = [
        f"restored site '{result.site}' into {result.target}: {result.files:,} files ({result.bytes:,} "
        f"bytes), backed up {result.created} from {result.source}, signed by {result.signer} "
        f"({result.fingerprint})",
    ]
    if result.replaced:
        lines.append(f"  the state that was there is kept at {result.replaced}")
    if str(result.target) != result.source:
        lines.append(
            f"  it was made from {result.source}: files that name that folder (stage records, inventories) "
            "point there; restore into the same folder for `aifactory up` to find every stage unchanged"
        )
    lines.append("  next: `aifactory up SPEC` re-verifies every stage; `aifactory audit verify` the reports")
    return "\n".join(lines)
