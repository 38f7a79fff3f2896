"""One HAProxy runtime API command on the host whose admin socket it is:
`python -m aifactory.frontdoor.relay SOCKET COMMAND` prints HAProxy's answer. The control host's hand
on a front door whose socket only that host sees (the lab's control host has its own /run); the
command is checked here as RuntimeApi checks it (one command, names HAProxy takes)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from aifactory.console import DEBUG_HELP, UsageParser, run_console
from aifactory.frontdoor.runtime_api import RuntimeApi


def main(argv: Sequence[str] | None = None) -> int:
    return run_console(_relay, argv, log_format=None)


def _relay(arguments: list[str]) -> int:
    parser = UsageParser(prog="python -m aifactory.frontdoor.relay")
    parser.add_argument("socket", metavar="SOCKET", type=Path, help="HAProxy's admin socket")
    parser.add_argument("line", metavar="COMMAND", help="one runtime API command")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(arguments)
    sys.stdout.write(RuntimeApi(args.socket).command(args.line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
