"""The `aifactory` command: parse arguments, call the library, render the result.

This is the only place that prints errors and picks exit codes: every AifactoryError is rendered as
one plain message (or JSON with --format json); tracebacks only with --debug.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from aifactory import __version__
from aifactory.errors import AifactoryError, ExitCode

# One module per command group; each exposes register(subparsers, common).
COMMAND_MODULES = (
    "aifactory.cli.site",  # init, validate, plan
    "aifactory.cli.secret",
    "aifactory.cli.policy",
    "aifactory.cli.lab",
    "aifactory.cli.provision",
    "aifactory.cli.bundle",
    "aifactory.cli.inventory",
    "aifactory.cli.deploy",
    "aifactory.cli.token",
    "aifactory.cli.train",  # train, jobs
    "aifactory.cli.audit",
    "aifactory.cli.pipeline",  # up, down
)
# Which module defines each top-level command: only that module is imported to run it (a command
# never pays for the others' imports, e.g. `validate` never loads Ansible or torch).
COMMANDS = {
    "init": "aifactory.cli.site",
    "validate": "aifactory.cli.site",
    "plan": "aifactory.cli.site",
    "secret": "aifactory.cli.secret",
    "policy": "aifactory.cli.policy",
    "lab": "aifactory.cli.lab",
    "provision": "aifactory.cli.provision",
    "bundle": "aifactory.cli.bundle",
    "inventory": "aifactory.cli.inventory",
    "deploy": "aifactory.cli.deploy",
    "token": "aifactory.cli.token",
    "train": "aifactory.cli.train",
    "jobs": "aifactory.cli.train",
    "audit": "aifactory.cli.audit",
    "up": "aifactory.cli.pipeline",
    "down": "aifactory.cli.pipeline",
}


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line, like every other usage error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # `--passphrase` must never mean `--passphrase-file`
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error[usage]: {message}\n")
        raise SystemExit(int(ExitCode.USAGE))


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return common


def _modules_for(argv: Sequence[str] | None) -> tuple[str, ...]:
    """The one module that defines the command in argv, or all of them (help, or no command)."""
    for token in argv or ():
        if not token.startswith("-"):
            module = COMMANDS.get(token)
            return (module,) if module else COMMAND_MODULES
    return COMMAND_MODULES


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    common = common_options()
    parser = _Parser(
        prog="aifactory",
        description="Stand up a sovereign, air-gapped AI factory from one site spec.",
        parents=[common],
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"aifactory {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in _modules_for(argv):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command group not written yet
                continue
            raise
        module.register(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments)
    args = parser.parse_args(arguments)
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    as_json = getattr(args, "format", "text") == "json"
    try:
        return int(args.handler(args))
    except AifactoryError as error:
        if debug:
            logging.exception("aifactory error")
        if as_json:
            print(json.dumps(error.as_dict(), indent=2, sort_keys=True))
        else:
            print(error.render(), file=sys.stderr)
        return int(error.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
