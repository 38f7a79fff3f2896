"""Run the aifactory CLI with the plan builder counted: `python count_plans.py COUNT_FILE ARGS...`
runs `aifactory ARGS...` in this process and writes how many times `aifactory.plan.build.build_plan`
(the function that turns a spec into a plan) was called to COUNT_FILE. tests/pipeline/test_up.py
uses it to prove that one `aifactory up` plans the site once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import aifactory.plan.build as plan_build
from aifactory.cli.main import main


def run(count_file: Path, argv: list[str]) -> int:
    real = plan_build.build_plan
    calls = 0

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    plan_build.build_plan = counted  # type: ignore[assignment]
    try:
        return main(argv)
    finally:
        count_file.write_text(f"{calls}\n")


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), sys.argv[2:]))
