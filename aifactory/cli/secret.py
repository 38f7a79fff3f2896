"""`aifactory secret set|list|remove`: the site's encrypted secret store.

Values come from standard input or a hidden prompt, never from the command line; the passphrase
from --passphrase-file, AIFACTORY_PASSPHRASE_FILE or a prompt. Changes take the site lock and are
recorded (reference only, never the value) in the operator log.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable

from aifactory.cli.output import emit_json
from aifactory.errors import AifactoryError, ExitCode, SecretError, UsageError
from aifactory.plan.build import spec_digest
from aifactory.secrets import STORE_FILE, SecretStore, read_passphrase, well_formed
from aifactory.spec.reference import resolve_site
from aifactory.state import SiteState

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "secret set": "printf %s \"$BMC_PASSWORD\" | aifactory secret set lab/site.yaml 'secret://bmc/{host}'",
    "secret list": "aifactory secret list lab --format json",
    "secret remove": "aifactory secret remove lab secret://bmc/lab-cpu-001",
}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    secret = subparsers.add_parser(
        "secret", parents=[common], help="manage the site's encrypted secret store"
    )
    actions = secret.add_subparsers(dest="secret_command", metavar="ACTION", parser_class=type(secret))
    actions.required = True

    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("site", help="site name, or its site spec (YAML)")
    store.add_argument(
        "--passphrase-file",
        help="file holding the store's passphrase (default: $AIFACTORY_PASSPHRASE_FILE, else a prompt)",
    )
    changing = argparse.ArgumentParser(add_help=False)
    changing.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another changing command on the site to finish",
    )

    set_ = actions.add_parser(
        "set",
        parents=[common, store, changing],
        allow_abbrev=False,
        help="store a value (read from standard input or a hidden prompt)",
    )
    set_.add_argument(
        "reference", help="secret://<path>, e.g. secret://bmc/lab-cpu-001 or secret://bmc/{host}"
    )
    set_.set_defaults(handler=cmd_set)

    list_ = actions.add_parser(
        "list", parents=[common, store], allow_abbrev=False, help="list the stored references (never values)"
    )
    list_.set_defaults(handler=cmd_list)

    remove = actions.add_parser(
        "remove", parents=[common, store, changing], allow_abbrev=False, help="remove a stored value"
    )
    remove.add_argument("reference", help="secret://<path>")
    remove.set_defaults(handler=cmd_remove)


def _site(argument: str) -> tuple[str, str | None]:
    """A site name, or a spec file's site name and digest (see aifactory.spec.reference)."""
    reference = resolve_site(argument)
    return reference.name, spec_digest(reference.spec) if reference.spec else None  # the plan's digest


def _reference(value: str) -> str:
    if not well_formed(value):
        raise UsageError(
            f"{value[:80]!r} is not a secret reference",
            hint="write it as secret://<path>, letters, digits and . _ - / {host} only",
        )
    return value


def _read_value() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("value: ")
        if getpass.getpass("value again: ") != first:
            raise SecretError("the two values differ; nothing was stored")
        value = first
    else:
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value
    if not value:
        raise SecretError("the value is empty; nothing was stored")
    return value


def _store(state: SiteState, passphrase_file: str | None, *, creating: bool = False) -> SecretStore:
    path = state.path(STORE_FILE)
    return SecretStore(path, read_passphrase(passphrase_file, confirm=creating and not path.exists()))


def _changing(args: argparse.Namespace, command: str, change: Callable[[SecretStore], str]) -> str:
    """Run one change under the site lock; record it (reference, never value) whatever the outcome."""
    site, digest = _site(args.site)
    reference = _reference(args.reference)
    state = SiteState.for_site(site)
    with state.lock(command, wait=args.wait):
        try:
            outcome = change(_store(state, args.passphrase_file, creating=command == "secret set"))
        except AifactoryError as error:
            state.record(
                command=command,
                result=f"failed: {error.code}",
                spec_digest=digest,
                detail={"reference": reference},
            )
            raise
        state.record(command=command, result=outcome, spec_digest=digest, detail={"reference": reference})
    return outcome


def cmd_set(args: argparse.Namespace) -> int:
    _reference(args.reference)  # a bad reference is refused before the value is asked for
    value = _read_value()

    def change(store: SecretStore) -> str:
        store.set(args.reference, value)
        return "stored"

    _changing(args, "secret set", change)
    _report(args, {"reference": args.reference, "result": "stored"}, f"stored {args.reference}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    def change(store: SecretStore) -> str:
        if not store.remove(args.reference):
            raise SecretError(
                f"no stored value for {args.reference}",
                code="secret-not-found",
                exit_code=ExitCode.INVALID,
                hint="`aifactory secret list SITE` shows the stored references",
            )
        return "removed"

    _changing(args, "secret remove", change)
    _report(args, {"reference": args.reference, "result": "removed"}, f"removed {args.reference}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    site, _ = _site(args.site)
    state = SiteState.for_site(site)
    references = _store(state, args.passphrase_file).references() if state.path(STORE_FILE).exists() else []
    text = "\n".join(references) if references else f"no secrets stored for site '{site}'"
    _report(args, {"site": site, "references": references}, text)
    return 0


def _report(args: argparse.Namespace, data: dict[str, object], text: str) -> None:
    if args.format == "json":
        emit_json(data)
    else:
        print(text)
