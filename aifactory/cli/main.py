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
    "aifactory.cli.train",
    "aifactory.cli.audit",
    "aifactory.cli.pipeline",  # up, down
)


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line, like every other usage error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error[usage]: {message}\n")
        raise SystemExit(int(ExitCode.USAGE))


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = _Parser(
        prog="aifactory",
        description="Stand up a sovereign, air-gapped AI factory from one site spec.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"aifactory {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command group not written yet
                continue
            raise
        module.register(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
