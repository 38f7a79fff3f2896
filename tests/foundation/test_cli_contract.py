"""The `aifactory` command's contract, walked over every leaf command found in the parser (none is
listed by hand: a command added later is checked the day it is added).

- `--help` of each leaf has a description, its exit codes and an example;
- `--format json`, before or after the command, gives JSON on standard output and nothing on
  standard error: on a usage error (exit 2), on a domain error (each required argument given a spec
  file that cannot exist: its folder is a regular file), and on success for the commands that
  succeed without a lab or a long run (init, validate, plan, bundle keygen, bundle current, secret
  list; the others need a running lab, a built bundle or a deployment, which their own stages'
  tests run).

In-process through `main`, as the console script calls it; one run through the installed script
proves the same holds there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aifactory.cli.help import leaves
from aifactory.cli.main import build_parser, main
from aifactory.errors import ExitCode

LEAVES = sorted(leaves(build_parser()), key=lambda item: item[0])
PATHS = [path for path, _ in LEAVES]
# A spec "inside" a regular file: nothing can read it, and no command can create it (root included).
BLOCKER = Path("blocker")
MISSING_SPEC = str(BLOCKER / "site.yaml")


def _json_before(path: str, rest: list[str]) -> list[str]:
    return ["--format", "json", *path.split(), *rest]


def _json_after(path: str, rest: list[str]) -> list[str]:
    """After the command's arguments; before a `--` (what follows it is a command of its own)."""
    end = rest.index("--") if "--" in rest else len(rest)
    return [*path.split(), *rest[:end], "--format", "json", *rest[end:]]


PLACEMENTS = {"before": _json_before, "after": _json_after}


def _value(action: argparse.Action) -> str:
    """A value argparse accepts for this argument (so that the command itself runs and fails)."""
    if action.choices:
        return str(next(iter(action.choices)))
    if action.type in (int, float):
        return "1"
    if action.dest == "reference":
        return "secret://contract/missing"
    if action.dest == "name":  # a new site's name (init)
        return "contract"
    if action.dest == "jurisdiction":
        return "NG"
    return MISSING_SPEC


def _required_arguments(leaf: argparse.ArgumentParser) -> list[str]:
    """Every required positional and option, each given a value; one of each required group."""
    chosen: list[str] = []
    grouped = {a for g in leaf._mutually_exclusive_groups for a in g._group_actions}
    for group in leaf._mutually_exclusive_groups:
        if group.required:
            first = group._group_actions[0]
            chosen += [first.option_strings[0], _value(first)]
    for action in leaf._actions:
        if action in grouped or isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings and action.nargs != argparse.REMAINDER:
            chosen.append(_value(action))
        elif action.required and action.option_strings:
            chosen += [action.option_strings[0], _value(action)]
    return chosen


# Where the required arguments alone do not reach a file: the option that does (init writes its
# spec there, policy test reads its policies there); `lab exec` needs a command after `--`.
DOMAIN_EXTRA = {
    "init": ["-o", MISSING_SPEC],
    "policy test": ["--policies", MISSING_SPEC],
    "lab exec": ["--", "true"],
}


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_walk_finds_every_command_group() -> None:
    """The walk reaches nested commands too (a walk that found nothing would pass every test)."""
    assert {"validate", "bundle build", "secret set", "lab exec", "audit verify-log", "up"} <= set(PATHS)
    assert len(PATHS) >= 25


@pytest.mark.parametrize("path", PATHS)
def test_help_has_a_description_exit_codes_and_an_example(
    path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main([*path.split(), "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    leaf = dict(LEAVES)[path]
    assert leaf.description and leaf.description in text, f"`aifactory {path} --help` has no description"
    assert "exit codes:\n  0    success\n" in text and "  2    usage error" in text
    example = text.split("example:\n", 1)[1] if "example:\n" in text else ""
    assert f"aifactory {path}" in example, f"`aifactory {path} --help` has no example of itself"


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
@pytest.mark.parametrize("path", PATHS)
def test_a_usage_error_is_json(path: str, placement: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = PLACEMENTS[placement](path, ["--no-such-option"])
    code, out, err = _run(capsys, argv)
    assert code == ExitCode.USAGE and err == ""
    error = json.loads(out)["error"]
    assert error["code"] == "usage" and error["exit_code"] == ExitCode.USAGE


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
@pytest.mark.parametrize("path", PATHS)
def test_a_domain_error_is_json(
    path: str,
    placement: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("AIFACTORY_BUNDLES_HOME", str(tmp_path / "bundles"))
    monkeypatch.chdir(tmp_path)
    BLOCKER.write_text("a file, not a folder\n")
    leaf = dict(LEAVES)[path]
    arguments = _required_arguments(leaf) + DOMAIN_EXTRA.get(path, [])
    code, out, err = _run(capsys, PLACEMENTS[placement](path, arguments))
    assert err == "", err
    result = json.loads(out)
    assert code not in (ExitCode.OK, ExitCode.USAGE, ExitCode.INTERNAL), result
    if "error" in result:
        assert result["error"]["exit_code"] == code and result["error"]["code"] != "internal"
    else:  # a verify command's verdict: the report of what failed, and exit 1
        assert (code, result["ok"]) == (ExitCode.INVALID, False)


@pytest.fixture
def lab_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("AIFACTORY_BUNDLES_HOME", str(tmp_path / "bundles"))
    monkeypatch.chdir(tmp_path)
    assert main(["init", "contract", "--jurisdiction", "NG", "-o", "site.yaml"]) == 0
    yield tmp_path / "site.yaml"


SUCCESSES = {
    "init": ["again", "--jurisdiction", "EU", "-o", "again.yaml"],
    "validate": ["site.yaml"],
    "plan": ["site.yaml", "-o", "plan.json"],
    "bundle keygen": ["-o", "keys"],
    "bundle current": ["contract"],
    "secret list": ["contract"],
}


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
@pytest.mark.parametrize("path", sorted(SUCCESSES))
def test_success_is_json(
    path: str, placement: str, lab_site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    code, out, err = _run(capsys, PLACEMENTS[placement](path, SUCCESSES[path]))
    assert (code, err) == (0, "")
    result = json.loads(out)
    assert not (isinstance(result, dict) and "error" in result)


def test_the_installed_command_reads_format_before_the_command(lab_site: Path) -> None:
    """`aifactory --format json validate X` (the top-level usage's order) through the console script."""
    script = Path(sys.executable).with_name("aifactory")
    for argv in (
        ["--format", "json", "validate", "site.yaml"],
        ["validate", "--format", "json", "site.yaml"],
    ):
        done = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=120, check=False)
        assert (done.returncode, done.stderr) == (0, "")
        assert json.loads(done.stdout)["site"] == "contract"
    bad = subprocess.run(
        [str(script), "--format", "json", "validate"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and bad.stderr == ""
    assert json.loads(bad.stdout)["error"]["code"] == "usage"
