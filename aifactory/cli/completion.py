"""Shell completion of the `aifactory` command (bash and zsh), through argcomplete.

scripts/setup.sh writes the shell's side (`register-python-argcomplete aifactory`) into
.venv/share/aifactory/; the README says how to source it. When that script asks (it runs
`aifactory` with `_ARGCOMPLETE` set), `enable` answers from the parser and ends the process; any other
run never imports argcomplete (an install without the control extra has no completion, and no cost).
"""

from __future__ import annotations

import argparse
import os

from aifactory.cli.help import leaves

# Positional arguments that name a site spec, completed with YAML files and folders.
SPEC_ARGUMENTS = frozenset({"site"})


def enable(parser: argparse.ArgumentParser) -> None:
    if "_ARGCOMPLETE" not in os.environ:
        return
    import argcomplete  # only here: completion is the control host's, and costs nothing otherwise

    specs = argcomplete.completers.FilesCompleter(allowednames=("yaml", "yml"), directories=True)
    for _path, leaf in leaves(parser):
        for action in leaf._actions:
            if action.dest in SPEC_ARGUMENTS and not action.option_strings:
                action.completer = specs  # type: ignore[attr-defined]  # argcomplete's own attribute
    argcomplete.autocomplete(parser)
