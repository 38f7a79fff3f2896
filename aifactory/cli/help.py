"""What `--help` says beyond the options: each command's description, its exit codes and an example.

Each command module keeps, beside its `register`, an `EXAMPLES` mapping from a command's path
(`"validate"`, `"bundle build"`) to one example command line, and where its exit codes differ from
the usual ones, an `EXIT_CODES` mapping. `document_leaves` copies them into every leaf parser's
help once the module has registered; tests/foundation/test_cli_contract.py checks that no leaf
lacks them.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType

from aifactory.errors import ExitCode

EXIT_MEANINGS: Mapping[int, str] = {
    ExitCode.OK: "success",
    ExitCode.INVALID: "invalid input or denied",
    ExitCode.USAGE: "usage error (bad option or argument)",
    ExitCode.CANNOT_EVALUATE: "cannot evaluate, or a prerequisite is missing (a tool, the site lock)",
    ExitCode.HOSTS_FAILED: "some hosts failed or were unreachable",
    ExitCode.INCIDENT: "a site-wide incident: more hosts failed than the drain budget lets the gate drain",
    ExitCode.INTERNAL: "a bug in aifactory (run again with --debug)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}
USUAL_EXIT_CODES: tuple[int, ...] = (0, 1, 2, 3, 70, 130)

TOP_EPILOG = """\
Every command takes --format json (before or after the command): its result, and any error, as
JSON on standard output. Exit codes: 0 success, 1 invalid or denied, 2 usage error, 3 cannot
evaluate, 4 some hosts failed, 5 a site-wide health incident, 70 a bug, 130 interrupted
(docs/cli.md).

example:
  aifactory init lab --jurisdiction NG && aifactory --format json validate lab/site.yaml
"""


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command that runs something (has no subcommands), with its path (`"bundle build"`)."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield " ".join(path), parser
        return
    for group in groups:
        for name, child in group.choices.items():
            yield from leaves(child, (*path, name))


def summaries(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The one-line help of each subcommand of `parser`, by name."""
    found: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                found[choice.dest] = choice.help or ""
    return found


def epilog(example: str, exit_codes: Sequence[int]) -> str:
    codes = "\n".join(f"  {code:<4} {EXIT_MEANINGS[code]}" for code in exit_codes)
    return f"exit codes:\n{codes}\n\nexample:\n  {example}\n"


def document_leaves(parser: argparse.ArgumentParser, module: ModuleType) -> None:
    """Give each leaf that `module` defines its description, exit codes and example."""
    examples: Mapping[str, str] = getattr(module, "EXAMPLES", {})
    exit_codes: Mapping[str, Sequence[int]] = getattr(module, "EXIT_CODES", {})
    _describe(parser)
    for path, leaf in leaves(parser):
        if leaf.epilog is None and path in examples:
            leaf.epilog = epilog(examples[path], exit_codes.get(path, USUAL_EXIT_CODES))
            leaf.formatter_class = argparse.RawDescriptionHelpFormatter


def _describe(parser: argparse.ArgumentParser) -> None:
    """A parser without a description takes its one-line help, capitalised, as one."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = summaries(parser)
        for name, child in action.choices.items():
            if child.description is None and helps.get(name):
                text = helps[name]
                child.description = text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
            _describe(child)
