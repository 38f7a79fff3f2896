"""The console edge on its own: what each kind of failure becomes (the entry points' own processes are
in test_entry_points.py). In-process: `run_console` is called as every entry point's `main` calls it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from aifactory.console import UsageParser, run_console
from aifactory.errors import DeployError, ExitCode, Location

Raises = Callable[[list[str]], int]


def _raising(error: BaseException) -> Raises:
    def command(arguments: list[str]) -> int:
        raise error

    return command


def _parsing(arguments: list[str]) -> int:
    parser = UsageParser(prog="probe")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--format", default="text")
    parser.add_argument("--debug", action="store_true")
    parser.parse_args(arguments)
    return 0


def test_a_domain_error_is_one_line_and_its_own_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    error = DeployError("2 hosts failed", location=Location(file="site.yaml"), hint="see the log")
    assert run_console(_raising(error), [], log_format=None) == ExitCode.HOSTS_FAILED
    out, err = capsys.readouterr()
    assert out == "" and err == "error[deploy]: site.yaml: 2 hosts failed (see the log)\n"


def test_json_only_where_the_command_takes_it(capsys: pytest.CaptureFixture[str]) -> None:
    error = DeployError("2 hosts failed")
    assert run_console(_raising(error), ["--format", "json"], json_option=True, log_format=None) == 4
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out)["error"]["code"] == "deploy"
    assert run_console(_raising(error), ["--format=json"], json_option=False, log_format=None) == 4
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error[deploy]: ")


def test_argparse_mistakes_are_one_usage_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_console(_parsing, ["--count", "many"], log_format=None) == ExitCode.USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "error[usage]: argument --count: invalid int value: 'many' (see `probe --help`)\n"


def test_no_abbreviations(capsys: pytest.CaptureFixture[str]) -> None:
    """`--cou 3` must not be read as `--count 3`: an option is spelled out or refused."""
    assert run_console(_parsing, ["--cou", "3"], log_format=None) == ExitCode.USAGE
    assert "the following arguments are required: --count" in capsys.readouterr().err


def test_interrupt_is_130(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_console(_raising(KeyboardInterrupt()), [], log_format=None) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_bug_is_one_line_with_70_and_the_traceback_only_with_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_console(_raising(KeyError("boom")), [], log_format=None) == ExitCode.INTERNAL
    err = capsys.readouterr().err
    hint = "a bug in aifactory; run again with --debug for the traceback"
    assert err == f"error[internal]: KeyError: 'boom' ({hint})\n"
    assert run_console(_raising(KeyError("boom")), ["--debug"], log_format=None) == ExitCode.INTERNAL
    err = capsys.readouterr().err
    assert (
        err.startswith("Traceback")
        and err.splitlines()[-1] == "error[internal]: KeyError: 'boom' (a bug in aifactory)"
    )


def test_an_os_error_nobody_caught_is_one_line_and_3(capsys: pytest.CaptureFixture[str]) -> None:
    error = OSError(28, "No space left on device")
    assert run_console(_raising(error), [], log_format=None) == ExitCode.CANNOT_EVALUATE
    assert capsys.readouterr().err.startswith("error[os-error]: [Errno 28] No space left on device (")


def test_a_closed_pipe_ends_quietly() -> None:
    """`... | head -1`: the reader goes away; no message, no 'Exception ignored' at exit."""
    program = (
        "import sys\n"
        "from aifactory.console import run_console\n"
        "def flood(arguments):\n"
        "    for _ in range(200000):\n"
        "        print('x' * 100)\n"
        "    return 0\n"
        "sys.exit(run_console(flood, []))\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert writer.stdout is not None and writer.stderr is not None
    writer.stdout.readline()
    writer.stdout.close()  # as `head -1` does
    err = writer.stderr.read()
    assert writer.wait(timeout=60) == 0
    assert err == b""
