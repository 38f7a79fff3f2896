"""The console edge: the one place that turns what went wrong into a message and an exit code.

Every entry point (`aifactory`, `aifactory-train`, `aifactory-serve` and each `python -m aifactory...`
module) is `main(argv) -> int` that hands its work to `run_console`:

- an AifactoryError becomes one plain line on standard error (`error[<code>]: ...`, then one indented
  line per problem), or, where the command takes `--format json` and was asked for it, the JSON form
  on standard output; the exit code is the error's (docs/cli.md);
- a mistake on the command line is a UsageError from `UsageParser`: the same one line, exit 2;
- Ctrl-C exits 130, a closed pipe on standard output (`... | head`) ends quietly;
- anything else is one line too (an OSError exits 3, a bug 70); the traceback only with `--debug`.

Standard library and aifactory.errors only: the smallest entry points run where little else is installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from aifactory.errors import AifactoryError, ExitCode, Location, PrerequisiteError, UsageError

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Libraries that log the failures they then raise (sushy: "Authentication error detected", "SSL/TLS
# error connecting to ..."): aifactory turns each into its one error message, so their lines would say
# it twice. They show with --debug, with the exchange that led there.
QUIET_UNLESS_DEBUG = ("sushy",)
DEBUG_HELP = "show debug logs, and the traceback of an error"
_DEBUG_HINT = "run again with --debug for the traceback"


class UsageParser(argparse.ArgumentParser):
    """argparse whose mistakes are UsageError, which the edge prints as one line and exits 2 with.

    Abbreviations are off unless asked for: `--passphrase` must never mean `--passphrase-file`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # argparse's own parameters, passed on
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, hint=f"see `{self.prog} --help`")


@dataclass(frozen=True)
class _Wanted:
    """What the user asked of the edge itself, read from the command line before the command runs."""

    debug: bool
    as_json: bool


def _wanted(arguments: Sequence[str], *, json_option: bool) -> _Wanted:
    """`--debug` and `--format json`, wherever they stand, the way argparse reads them (so a usage
    error found later is still shown as asked). A command line too broken for that asks for nothing."""
    probe = UsageParser(add_help=False)
    probe.add_argument("--debug", action="store_true")
    probe.add_argument("--format", default="text")
    try:
        known, _ = probe.parse_known_args(list(arguments))
    except UsageError:  # e.g. `--format` with no value: the command's own parser says so
        return _Wanted(debug=False, as_json=False)
    return _Wanted(debug=bool(known.debug), as_json=json_option and known.format == "json")


def run_console(
    command: Callable[[list[str]], int],
    argv: Sequence[str] | None = None,
    *,
    json_option: bool = False,
    log_format: str | None = LOG_FORMAT,
) -> int:
    """Run `command` on the arguments (sys.argv's by default) and return the process's exit code.

    `json_option`: the command takes `--format json`, and its errors then go out as JSON.
    `log_format`: how to configure logging (WARNING, or DEBUG with --debug); None leaves it alone.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    wanted = _wanted(arguments, json_option=json_option)
    if log_format is not None:
        logging.basicConfig(level=logging.DEBUG if wanted.debug else logging.WARNING, format=log_format)
        for name in QUIET_UNLESS_DEBUG:
            logging.getLogger(name).setLevel(logging.DEBUG if wanted.debug else logging.CRITICAL)
    try:
        return int(command(arguments))
    except AifactoryError as error:
        return _report(error, wanted)
    except KeyboardInterrupt:
        _traceback_if(wanted)
        print("interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        _quiet_stdout()  # the reader went away (`... | head`): nothing left to say, and nowhere to
        return int(ExitCode.OK)
    except OSError as exc:  # the machine refused something no command anticipated (a full disk, ...)
        problem = AifactoryError(str(exc), code="os-error", exit_code=ExitCode.CANNOT_EVALUATE)
        return _report(_hinted(problem, wanted), wanted, cause=exc)
    except Exception as exc:  # noqa: BLE001 -- the edge itself: a bug is reported in one line, not hidden
        problem = AifactoryError(f"{type(exc).__name__}: {exc}", code="internal", exit_code=ExitCode.INTERNAL)
        return _report(_hinted(problem, wanted, "a bug in aifactory"), wanted, cause=exc)


def _report(error: AifactoryError, wanted: _Wanted, *, cause: BaseException | None = None) -> int:
    _traceback_if(wanted, cause or error)
    if wanted.as_json:
        print(json.dumps(error.as_dict(), indent=2, sort_keys=True))
    else:
        print(error.render(), file=sys.stderr)
    return int(error.exit_code)


def _hinted(error: AifactoryError, wanted: _Wanted, what: str | None = None) -> AifactoryError:
    if not wanted.debug:
        error.hint = f"{what}; {_DEBUG_HINT}" if what else _DEBUG_HINT
    elif what:
        error.hint = what
    return error


def _traceback_if(wanted: _Wanted, error: BaseException | None = None) -> None:
    if not wanted.debug:
        return
    if error is None:
        traceback.print_exc(file=sys.stderr)
    else:
        traceback.print_exception(error, file=sys.stderr)


def _quiet_stdout() -> None:
    """Point standard output at /dev/null, so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (output captured in-process): nothing to do
        pass


def generated_file_main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    text: Callable[[], str],
    default_output: Path,
    what: str,
    code: str,
) -> int:
    """The entry point of a file the project generates and commits (the spec's JSON Schema, the
    economics recording rules): write it (`-o FILE`, `-` for standard output), or `--check` that the
    committed file is what the code generates now (exit 1 and what to run when it is not)."""

    def generate(arguments: list[str]) -> int:
        parser = UsageParser(prog=prog, description=description)
        parser.add_argument(
            "-o", "--output", default=str(default_output), help="file to write, or - for stdout"
        )
        parser.add_argument(
            "--check", action="store_true", help="compare with the file instead of writing it"
        )
        parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
        args = parser.parse_args(arguments)
        generated = text()
        if args.output == "-":
            sys.stdout.write(generated)
            return 0
        target = Path(args.output)
        if args.check:
            current = target.read_text() if target.exists() else ""
            if current != generated:
                print(f"{target} is out of date: run `{prog}`", file=sys.stderr)
                return int(ExitCode.INVALID)
            return 0
        try:
            target.write_text(generated)
        except OSError as exc:
            raise PrerequisiteError(
                f"cannot write the {what}: {exc.strerror}", code=code, location=Location(file=str(target))
            ) from None
        print(f"wrote {target}")
        return 0

    return run_console(generate, argv)
