"""`aifactory policy check SITE` and `aifactory policy test`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aifactory.cli.output import emit_json, table
from aifactory.errors import ExitCode
from aifactory.plan import plan_site
from aifactory.policy import PolicyReport, check_site
from aifactory.policy.backend import DEFAULT_TIME_LIMIT_S
from aifactory.policy.engine import ENGINES
from aifactory.policy.testing import run_opa_tests, run_rego_tests

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "policy check": "aifactory policy check lab/site.yaml --format json",
    "policy test": "aifactory policy test",
}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    policy = subparsers.add_parser(
        "policy", parents=[common], help="check a site against the policies; run the Rego tests"
    )
    commands = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    commands.required = True

    check = commands.add_parser(
        "check", parents=[common], help="evaluate every policy against the site's plan (exit 1 on a deny)"
    )
    check.add_argument("site", help="site spec (YAML)")
    check.add_argument(
        "--engine", choices=ENGINES, default="embedded", help="embedded regorus (default) or an OPA server"
    )
    check.add_argument("--opa-url", help="the OPA server for --engine opa, e.g. http://127.0.0.1:8181")
    check.add_argument(
        "--waivers",
        type=Path,
        help="waivers file (default: <spec stem>.waivers.yaml beside the spec, if present)",
    )
    check.add_argument(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT_S,
        metavar="SECONDS",
        help=f"stop the evaluation and deny (exit 3) past this (default {DEFAULT_TIME_LIMIT_S:g})",
    )
    check.set_defaults(handler=cmd_check)

    test = commands.add_parser("test", parents=[common], help="run the Rego tests with the embedded engine")
    test.add_argument("--policies", type=Path, help="policy folder (default: the installed policies)")
    test.add_argument(
        "--engine",
        choices=ENGINES,
        default="embedded",
        help="embedded regorus (default), or `opa test` with an opa binary on the PATH",
    )
    test.set_defaults(handler=cmd_test)


def cmd_check(args: argparse.Namespace) -> int:
    planned = plan_site(args.site, write_lock=False)
    report = check_site(
        planned, engine=args.engine, opa_url=args.opa_url, waivers=args.waivers, time_limit_s=args.time_limit
    )
    if args.format == "json":
        emit_json(report.as_dict())
    else:
        print(render_report(report))
    return int(ExitCode.INVALID if report.denied else ExitCode.OK)


def render_report(report: PolicyReport) -> str:
    counts = report.counts()
    lines = [
        f"site {report.site} (jurisdiction {report.jurisdiction}), engine {report.engine}, "
        f"{report.today.isoformat()}",
        "",
    ]
    rows = [
        (c.id, c.status, c.findings["fail"], c.findings["waived"], len(c.rules), _titles(c.rules))
        for c in report.controls
    ]
    lines.append(table(("control", "status", "fail", "waived", "rules", "what it checks"), rows))
    for heading, items in (("findings", report.findings), ("waiver problems", report.waiver_problems)):
        if not items:
            continue
        lines += ["", f"{heading}:"]
        for f in items:
            lines.append(
                f"  {f.status.upper():<8} {f.severity:<8} {','.join(f.controls):<10} {f.resource}: {f.msg}"
            )
            lines.append(f"           rule {f.rule}; fix: {f.remediation}")
            if f.waiver:
                lines.append(
                    f"           waiver: {f.waiver['reason']} (approved by {f.waiver['approved_by']}, "
                    f"expires {f.waiver['expires']})"
                )
    verdict = "DENY" if report.denied else "PASS"
    lines += [
        "",
        f"{verdict}: {counts['fail']} failed, {counts['waived']} waived, "
        f"{counts['waiver_problems']} waiver problem(s); {report.rules_evaluated} rules",
    ]
    return "\n".join(lines)


def _titles(rules: list[dict[str, str]], width: int = 60) -> str:
    text = "; ".join(r["title"] for r in rules)
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_test(args: argparse.Namespace) -> int:
    run = run_opa_tests if args.engine == "opa" else run_rego_tests
    results = run(args.policies)
    failed = sum(not r.passed for r in results)
    if args.format == "json":
        emit_json(
            {"tests": [r.as_dict() for r in results], "passed": len(results) - failed, "failed": failed}
        )
    else:
        for r in results:
            detail = f" ({r.error})" if r.error else ""
            print(f"{'PASS' if r.passed else 'FAIL'} {r.name}{detail}")
        print(f"{len(results) - failed} passed, {failed} failed", file=sys.stdout)
    return int(ExitCode.INVALID if failed or not results else ExitCode.OK)
