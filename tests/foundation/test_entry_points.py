"""Every way to start aifactory from a shell ends the same way on bad input: one line, a documented exit
code, no traceback.

The entry points are found, not listed: the console scripts from pyproject.toml's [project.scripts]
and every module of the package with an `if __name__ == "__main__":` block (run as `python -m`). Each
runs as its own process twice: with an option nobody defines (exit 2, one `error[usage]: ...` line)
and with an input that makes it fail on the domain side (a missing or unwritable file...): the exit
code and error reference docs/cli.md documents for that failure, one line naming what failed.
A new entry point fails `test_every_entry_point_has_a_domain_error_row` until it gets a row below.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import aifactory

PACKAGE = Path(aifactory.__file__).resolve().parent
PYPROJECT = PACKAGE.parent / "pyproject.toml"
BAD_OPTION = "--no-such-option-anywhere"
# A job file that parses, for the entry points that must get past reading one.
VALID_JOB = "schema: aifactory.job/v1\nname: probe\nplan: plan.json\ndataset: d\nmodel: m\n"


@dataclass(frozen=True)
class EntryPoint:
    name: str  # the console script, or the module's dotted name
    argv: tuple[str, ...]  # how to start it

    def __str__(self) -> str:
        return self.name


def _console_scripts() -> list[EntryPoint]:
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    bin_dir = Path(sys.executable).parent  # the venv setup.sh made: its bin holds the scripts
    return [EntryPoint(name, (str(bin_dir / name),)) for name in sorted(scripts)]


def _runs_as_main(path: Path) -> bool:
    for node in ast.parse(path.read_text(), str(path)).body:
        test = node.test if isinstance(node, ast.If) else None
        if (
            isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name)
            and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
        ):
            return True
    return False


def _main_modules() -> list[EntryPoint]:
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py" or _runs_as_main(path):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            dotted = ".".join(parts[:-1] if parts[-1] == "__main__" else parts)
            modules.append(EntryPoint(dotted, (sys.executable, "-m", dotted)))
    return modules


ENTRY_POINTS = _console_scripts() + _main_modules()


@dataclass(frozen=True)
class DomainError:
    """How to make one entry point fail on its input, and what it must then say. In `args` and `stdin`,
    {missing} is a file that does not exist and {tmp} a fresh folder."""

    args: tuple[str, ...]
    exit_code: int
    code: str  # the error reference: `error[<code>]: ...`
    names: str  # what the line must name (the file, the setting)
    stdin: str = ""
    env: dict[str, str] = field(default_factory=dict)


_SPEC_MISSING = DomainError(("validate", "{missing}"), 1, "spec-not-found", "{missing}")
_JOB_MISSING = DomainError(("{missing}",), 2, "usage", "{missing}")
_PLAN_MISSING = DomainError(("--plan", "{missing}"), 2, "invalid-plan", "{missing}")

DOMAIN_ERRORS: dict[str, DomainError] = {
    "aifactory": _SPEC_MISSING,
    "aifactory.cli.main": _SPEC_MISSING,
    "aifactory-train": _JOB_MISSING,
    "aifactory.runtime.train_cli": _JOB_MISSING,
    "aifactory-serve": _PLAN_MISSING,
    "aifactory.runtime.serve_cli": _PLAN_MISSING,
    # torchrun's worker, started as aifactory-train would start it (the decision in its environment)
    "aifactory.runtime.train_worker": DomainError(
        ("{missing}",), 2, "usage", "{missing}", env={"AIFACTORY_DECISION_ID": "probe"}
    ),
    # the loop's evaluation job without the site's model-signing key to verify the evaluation set with
    "aifactory.runtime.evaluate": DomainError(
        (
            *("--model", "m", "--model-dir", "{tmp}", "--challenger", "sha256:" + "0" * 64),
            *("--dataset", "d", "--dataset-dir", "{tmp}", "--version", "1", "--trust", "{missing}"),
            *("--out", "{tmp}/report.json"),
        ),
        1,
        "evaluation-set-invalid",
        "{missing}",
    ),
    # a valid job on stdin, but no Slurm allocation around it
    "aifactory.runtime.allocation": DomainError(
        ("--job-id", "1"), 2, "usage", "SLURM_JOB_NODELIST", stdin=VALID_JOB
    ),
    "aifactory.spec.schema": DomainError(
        ("-o", "{tmp}/no-such-folder/schema.json"), 3, "schema-not-written", "{tmp}/no-such-folder"
    ),
    # a health task that is not there (aifactory health writes it on the host's standard input)
    "aifactory.runtime.health": DomainError(("--task", "{missing}"), 2, "usage", "{missing}"),
    # slurmd's HealthCheckProgram given a node task that is not there
    "aifactory.runtime.health.slurmd_check": DomainError(("--task", "{missing}"), 2, "usage", "{missing}"),
    "aifactory.runtime.health.allreduce": DomainError(
        ("--rank", "0", "--world", "1", "--master", "127.0.0.1", "--port", "9"), 2, "usage", "--world 1"
    ),
    "aifactory.telemetry.economics": DomainError(
        ("-o", "{tmp}/no-such-folder/economics.rules.yml"), 3, "rules-not-written", "{tmp}/no-such-folder"
    ),
    # the lab BMC's emulator (sushy-tools' own command line) given a config file that is not there
    "aifactory.lab.bmc_emulator": DomainError(("--config", "{missing}"), 2, "usage", "{missing}"),
    "aifactory.pipeline.serve_probe": DomainError(
        ("http://127.0.0.1:9", "m", "{missing}", "{missing}", "1"), 3, "token-unreadable", "{missing}"
    ),
    # the upgrade's hand on HAProxy's admin socket (run on the control host) given one that is not there
    "aifactory.frontdoor.relay": DomainError(("{missing}", "show info"), 3, "front-door", "{missing}"),
}


def _run(
    entry: EntryPoint, args: list[str], tmp_path: Path, *, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "AIFACTORY_STATE_HOME": str(tmp_path / "state"), **(env or {})}
    for inherited in ("AIFACTORY_DECISION_ID", "SLURM_JOB_ID", "SLURM_JOB_NODELIST"):
        if inherited not in (env or {}):
            environment.pop(inherited, None)
    return subprocess.run(
        [*entry.argv, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=180,  # the training worker imports torch
        check=False,
    )


def _one_error_line(done: subprocess.CompletedProcess[str], code: str) -> str:
    """The one line on standard error, checked: nothing on standard output, no traceback anywhere."""
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.stdout == "", done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error[{code}]: "), lines[0]
    return lines[0]


def test_entry_points_are_found() -> None:
    """The discovery itself: the three console scripts and the modules the issue named are in it."""
    names = {str(e) for e in ENTRY_POINTS}
    assert {"aifactory", "aifactory-train", "aifactory-serve", "aifactory.cli.main"} <= names
    assert {"aifactory.runtime.serve_cli", "aifactory.spec.schema", "aifactory.runtime.allocation"} <= names


def test_every_entry_point_has_a_domain_error_row() -> None:
    names = {str(e) for e in ENTRY_POINTS}
    assert not names - DOMAIN_ERRORS.keys(), (
        f"add a DOMAIN_ERRORS row for {sorted(names - DOMAIN_ERRORS.keys())}"
    )
    assert not DOMAIN_ERRORS.keys() - names, (
        f"rows for no entry point: {sorted(DOMAIN_ERRORS.keys() - names)}"
    )


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=str)
def test_a_bad_option_is_one_usage_line_and_exit_2(entry: EntryPoint, tmp_path: Path) -> None:
    done = _run(entry, [BAD_OPTION], tmp_path)
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done, "usage")
    assert "--help" in line  # where to look next


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=str)
def test_a_domain_error_is_one_line_and_its_documented_exit_code(entry: EntryPoint, tmp_path: Path) -> None:
    row = DOMAIN_ERRORS.get(str(entry))
    if row is None:
        pytest.fail(f"no DOMAIN_ERRORS row for {entry}")
    fill = {"missing": str(tmp_path / "no-such-file"), "tmp": str(tmp_path)}
    done = _run(
        entry, [a.format(**fill) for a in row.args], tmp_path, stdin=row.stdin.format(**fill), env=row.env
    )
    assert done.returncode == row.exit_code, done.stderr
    assert row.names.format(**fill) in _one_error_line(done, row.code)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    """The other side of the rule: with --debug the same error comes with its traceback."""
    entry = next(e for e in ENTRY_POINTS if e.name == "aifactory")
    done = _run(entry, ["validate", str(tmp_path / "no-such-file"), "--debug"], tmp_path)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and done.stderr.rstrip().splitlines()[-1].startswith(
        "error[spec-not-found]"
    )
