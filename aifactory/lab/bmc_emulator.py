"""`python -m aifactory.lab.bmc_emulator --config FILE`: one lab BMC, sushy-tools' emulator with the
emulated Power resource of aifactory.lab.bmc_power added to its Flask app before it serves.

A module of its own, which the lab package does not import, so that running it as `__main__` never
meets an already imported copy of itself; its command line is checked here, at the console edge,
before sushy-tools parses the same arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from aifactory.console import UsageParser, run_console
from aifactory.errors import Location, UsageError

PROG = "python -m aifactory.lab.bmc_emulator"


def _serve(arguments: list[str]) -> int:
    parser = UsageParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="the emulator's config (SUSHY_EMULATOR_*)")
    config: Path = parser.parse_args(arguments).config
    if not config.is_file():
        raise UsageError(f"no emulator config at {config}", location=Location(file=str(config)))
    # sushy-tools ships no type information
    from sushy_tools.emulator import main as sushy  # type: ignore[import-untyped]

    from aifactory.lab.bmc_power import extend

    extend(sushy.app)
    sys.argv = [PROG, "--config", str(config)]  # sushy-tools parses its own command line
    return int(sushy.main())


def main(argv: Sequence[str] | None = None) -> int:
    return run_console(_serve, argv)


if __name__ == "__main__":
    sys.exit(main())
