"""`aifactory deploy SITE [--check] [--limit PATTERN] [--tags TAGS]`: install the site from its bundle."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from aifactory.cli.output import emit_json, table
from aifactory.deploy import DeployOptions, DeployResult, DeploySettings, Progress, Update, deploy_site
from aifactory.deploy.progress import UNFINISHED
from aifactory.deploy.settings import MITOGEN_STRATEGY
from aifactory.pipeline.connection import site_connection
from aifactory.plan import plan_site

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "deploy": "aifactory deploy lab/site.yaml --check --limit gpu",
}
# These commands can also exit 4 (some hosts failed).
EXIT_CODES = {"deploy": (0, 1, 2, 3, 4, 70, 130)}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "deploy",
        parents=[common],
        help="run the site playbook from the control host, installing from the imported bundle",
    )
    parser.add_argument("site", help="site spec (YAML); its plan must equal the bundle's signed plan")
    parser.add_argument("--check", action="store_true", help="dry run: show what would change (with diff)")
    parser.add_argument("--no-diff", action="store_true", help="with --check, do not show file diffs")
    parser.add_argument("--limit", metavar="PATTERN", help="only these hosts or groups (Ansible pattern)")
    parser.add_argument(
        "--tags",
        metavar="TAGS",
        default="",
        help="only tasks with these tags, comma-separated (e.g. runtime_install,nist_ac_17)",
    )
    parser.add_argument("--skip-tags", metavar="TAGS", default="", help="skip tasks with these tags")
    parser.add_argument(
        "--full",
        action="store_true",
        help="run every role on every host, also on hosts that still match their last full "
        "run (by default those are checked in one read and left out; docs/deploy.md)",
    )
    parser.add_argument(
        "--trust",
        metavar="ALLOWED_SIGNERS",
        help="the site's allowed_signers for bundles, given to hosts to verify with "
        "(default: the key the import verified)",
    )
    parser.add_argument(
        "--forks",
        type=_forks,
        default=DeploySettings().forks,
        help=f"hosts Ansible works on at once (default {DeploySettings().forks}; a national site's control "
        'host with many cores takes more: docs/deploy.md, "A measured path to 10,000 hosts")',
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more Ansible output in the log")
    parser.set_defaults(handler=cmd_deploy)


def _forks(text: str) -> int:
    """1 to 1000: Ansible forks a worker per host it works on at once."""
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of forks from 1 to 1000")
    return int(text)


def _tags(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


class _LiveDisplay:
    """One line per task, and one per host result that changed something or failed."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.started = time.monotonic()

    def __call__(self, update: Update, progress: Progress) -> None:
        elapsed = f"[{time.monotonic() - self.started:6.1f}s]"
        if update.kind == "task":
            print(f"{elapsed} task {update.task_number:3d}  {update.task}", file=self.stream, flush=True)
        elif update.kind in ("converged", "runs"):
            print(
                f"{elapsed}   {update.host:<24} {update.kind.upper():<11} {update.message}",
                file=self.stream,
                flush=True,
            )
        elif update.kind in ("changed", "failed", "unreachable"):
            row = progress.host(update.host or "")
            detail = f": {update.message}" if update.message else ""
            print(
                f"{elapsed}   {update.host:<24} {update.kind.upper():<11} ok={row.ok} changed={row.changed}"
                f"{detail}",
                file=self.stream,
                flush=True,
            )


def render_summary(result: DeployResult) -> str:
    rows = [
        (
            h["host"],
            "converged" if h["converged"] else h["status"],
            h["ok"],
            h["changed"],
            h["failed"],
            h["unreachable"],
            h["skipped"],
            h["message"][:80] if h["status"] in UNFINISHED or h["converged"] else "",
        )
        for h in result.hosts
    ]
    headers = ("host", "status", "ok", "changed", "failed", "unreachable", "skipped", "reason")
    lines = [table(headers, rows), ""]
    mode = "dry run (--check): nothing was changed" if result.check else "deployed"
    lines.append(
        f"{mode}: bundle {result.bundle_version}, {len(result.hosts)} hosts, "
        f"{result.changed} changes, {result.wall_seconds:.1f}s"
    )
    converged = [h["host"] for h in result.hosts if h["converged"]]
    if converged:
        lines.append(
            f"{len(converged)} host(s) converged (left out, unchanged since their last full run); "
            "--full runs every role on them too"
        )
    if result.failed_hosts:
        failed = ", ".join(result.failed_hosts)
        lines.append(
            f"{len(result.failed_hosts)} host(s) failed, unreachable or cut off: {failed}; "
            "fix them and run `aifactory deploy` again (it finishes the job)"
        )
    if result.strategy != MITOGEN_STRATEGY:
        lines.append(
            "Ansible's linear strategy ran: Mitogen is not installed on this control host "
            "(the [control] extra and the bundle's control wheels carry it; with it a deploy takes "
            "about half the time: docs/deploy.md)"
        )
    lines.append(f"event log: {result.event_log}")
    if result.installed:
        lines.append(f"evidence: {result.installed}")
    return "\n".join(lines)


def cmd_deploy(args: argparse.Namespace) -> int:
    options = DeployOptions(
        check=args.check,
        diff=False if args.no_diff else None,
        limit=args.limit,
        tags=_tags(args.tags),
        skip_tags=_tags(args.skip_tags),
        trust=Path(args.trust) if args.trust else None,
        verbosity=args.verbose,
        full=args.full,
        settings=replace(DeploySettings(), forks=args.forks),
    )
    display = None if args.format == "json" or args.quiet else _LiveDisplay()
    planned = plan_site(args.site, write_lock=False)
    connection = site_connection(planned.plan.name)
    result = deploy_site(planned, connection=connection, options=options, on_update=display)
    if args.format == "json":
        emit_json(result.as_dict())
    else:
        print(render_summary(result))
    return int(result.exit_code)
