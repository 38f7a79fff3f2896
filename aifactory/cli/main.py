"""The `aifactory` command: parse arguments, call the library, render the result.

Errors and exit codes are the console edge's (aifactory.console): every AifactoryError is rendered
as one plain message (or JSON with --format json); tracebacks only with --debug.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from aifactory import __version__
from aifactory.cli import completion
from aifactory.cli import help as help_text
from aifactory.console import DEBUG_HELP, UsageParser, run_console

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
    "aifactory.cli.health",
    "aifactory.cli.audit",
    "aifactory.cli.models",
    "aifactory.cli.data",  # data versions, show, version, erase
    "aifactory.cli.loop",  # loop run, sign-off, turns; lineage
    "aifactory.cli.pipeline",  # up, down
    "aifactory.cli.monitoring",  # status, monitoring, report
    "aifactory.cli.backup",  # backup, restore
    "aifactory.cli.activation",  # activation, versions
    "aifactory.cli.rotate",
    "aifactory.cli.upgrade",  # upgrade, rollback
    "aifactory.cli.resize",
    "aifactory.cli.replace",
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
    "health": "aifactory.cli.health",
    "audit": "aifactory.cli.audit",
    "models": "aifactory.cli.models",
    "data": "aifactory.cli.data",
    "loop": "aifactory.cli.loop",
    "lineage": "aifactory.cli.loop",
    "up": "aifactory.cli.pipeline",
    "down": "aifactory.cli.pipeline",
    "status": "aifactory.cli.monitoring",
    "monitoring": "aifactory.cli.monitoring",
    "report": "aifactory.cli.monitoring",
    "backup": "aifactory.cli.backup",
    "restore": "aifactory.cli.backup",
    "activation": "aifactory.cli.activation",
    "versions": "aifactory.cli.activation",
    "rotate": "aifactory.cli.rotate",
    "upgrade": "aifactory.cli.upgrade",
    "rollback": "aifactory.cli.upgrade",
    "resize": "aifactory.cli.resize",
    "replace": "aifactory.cli.replace",
}


def common_options(*, defaults: bool = False) -> argparse.ArgumentParser:
    """`--format` and `--debug`, taken by `aifactory` itself and by every command under it.

    Only the top level sets their defaults: a subcommand's parser copies every attribute it has onto
    the result, so a default there would undo `aifactory --format json validate X` (argparse's own
    rule). With SUPPRESS, a subcommand sets them only when they are given after it.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--format",
        choices=("text", "json"),
        default="text" if defaults else argparse.SUPPRESS,
        help="output format (before or after the command)",
    )
    common.add_argument(
        "--debug", action="store_true", default=False if defaults else argparse.SUPPRESS, help=DEBUG_HELP
    )
    common.add_argument(
        "--quiet",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="no progress line (it is shown only on a terminal anyway)",
    )
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
    parser = UsageParser(
        prog="aifactory",
        description="Stand up a sovereign, air-gapped AI factory from one site spec.",
        epilog=help_text.TOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options(defaults=True)],
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"aifactory {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=UsageParser)
    subparsers.required = True
    for name in _modules_for(argv):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command group not written yet
                continue
            raise
        module.register(subparsers, common)
        help_text.document_leaves(parser, module)
    completion.enable(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_console(_run, argv, json_option=True)


def _run(arguments: list[str]) -> int:
    args = build_parser(arguments).parse_args(arguments)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
