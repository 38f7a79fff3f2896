"""`aifactory up SITE` and `aifactory down SITE`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

from aifactory.cli.output import emit_json, table
from aifactory.errors import ExitCode, PipelineFailed
from aifactory.pipeline.connection import lab_is_up
from aifactory.pipeline.runner import Stage, StageOutcome
from aifactory.pipeline.stages import UpOptions
from aifactory.pipeline.up import down, stage_names, up
from aifactory.plan import plan_site

_MARK = {
    "ok": "ok",
    "verified": "unchanged",
    "skipped": "skipped",
    "failed": "FAILED",
    "interrupted": "interrupted",
    "not-run": "not run",
}


# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "up": "aifactory up lab/site.yaml",
    "down": "aifactory down lab/site.yaml",
}
# These commands can also exit 4 (some hosts failed).
EXIT_CODES = {"up": (0, 1, 2, 3, 4, 70, 130)}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    names = stage_names()
    parser = subparsers.add_parser(
        "up",
        parents=[common],
        help="bring a site from spec to a serving, audited AI factory",
        description=f"Stages, in order: {', '.join(names)}. A re-run resumes: stages whose inputs did not "
        "change are re-verified and skipped.",
    )
    parser.add_argument("site", help="site spec (YAML)")
    parser.add_argument("--from", dest="start_at", choices=names, help="force a restart at this stage")
    parser.add_argument(
        "--lab",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rehearse the site in the local lab (brought up by the lab stage), or reach real hosts "
        "over SSH from this control host (--no-lab); default: the lab when one of this site is up",
    )
    parser.add_argument("--engine", choices=("embedded", "opa"), default="embedded", help="policy engine")
    parser.add_argument("--opa-url", help="OPA server for --engine opa")
    parser.add_argument("--timestamp", help="the audit report's timestamp (ISO 8601; default now)")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for the site lock instead of refusing",
    )
    parser.set_defaults(handler=cmd_up)

    teardown = subparsers.add_parser("down", parents=[common], help="tear down what `up` made on the lab")
    teardown.add_argument("site", help="site spec (YAML)")
    teardown.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    teardown.set_defaults(handler=cmd_down)


class TextReporter:
    """One line when a stage starts, one line with its result."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.started = time.monotonic()

    def stage_started(self, index: int, total: int, stage: Stage) -> None:
        print(
            f"[{index + 1:>2}/{total}] {stage.name:<10} {stage.description} ...", file=self.stream, flush=True
        )

    def stage_finished(self, index: int, total: int, outcome: StageOutcome) -> None:
        print(
            f"[{index + 1:>2}/{total}] {outcome.name:<10} {_MARK.get(outcome.status, outcome.status)} "
            f"({outcome.seconds:.1f}s) {outcome.summary}",
            file=self.stream,
            flush=True,
        )


class QuietReporter:
    def stage_started(self, index: int, total: int, stage: Stage) -> None:
        pass

    def stage_finished(self, index: int, total: int, outcome: StageOutcome) -> None:
        pass


def _summary(outcomes: list[StageOutcome]) -> str:
    rows = [(o.name, _MARK.get(o.status, o.status), f"{o.seconds:.1f}s") for o in outcomes]
    total = sum(o.seconds for o in outcomes)
    return table(("stage", "status", "time"), rows) + f"\n{'total':<10} {total:.1f}s"


def cmd_up(args: argparse.Namespace) -> int:
    spec = Path(args.site)
    planned = plan_site(spec, write_lock=False)  # the one plan every stage uses
    lab = args.lab if args.lab is not None else lab_is_up(planned.plan.name)
    options = UpOptions(lab=lab, engine=args.engine, opa_url=args.opa_url, timestamp=args.timestamp)
    as_json = args.format == "json"
    reporter = QuietReporter() if as_json else TextReporter()
    try:
        result = up(planned, options=options, reporter=reporter, start_at=args.start_at, lock_wait=args.wait)
    except PipelineFailed as failed:
        if as_json:
            emit_json({"stages": [o.as_dict() for o in failed.outcomes], **failed.error.as_dict()})
        else:
            print("\n" + _summary(failed.outcomes), file=sys.stderr)
            print(failed.error.render(), file=sys.stderr)
            print(
                f"fix the cause, then run `aifactory up {spec}` again: it resumes at {failed.stage}",
                file=sys.stderr,
            )
        return int(failed.error.exit_code)
    if as_json:
        emit_json(result.as_dict())
        return int(ExitCode.OK)
    print("\n" + _summary(result.outcomes))
    if result.report:
        print(
            f"\naudit report: {result.report}/report.html (verify: aifactory audit verify {result.report} "
            f"--trust {result.report_trust})"
        )
    return int(ExitCode.OK)


def cmd_down(args: argparse.Namespace) -> int:
    done = down(Path(args.site), lock_wait=args.wait)
    if args.format == "json":
        emit_json({"done": done})
    else:
        print("; ".join(done))
    return int(ExitCode.OK)
