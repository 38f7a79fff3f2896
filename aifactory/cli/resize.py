"""`aifactory resize SITE [--dry-run] [--drain-timeout S] [--since OLD_PLAN]`: grow or shrink pools
to the spec's counts (docs/operations.md, "Growing and shrinking pools")."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from aifactory.cli import progress
from aifactory.cli.output import emit_json
from aifactory.errors import PrerequisiteError, ResizeError, UsageError

if TYPE_CHECKING:
    from aifactory.lifecycle.resize import Resize
    from aifactory.plan import PlannedSite
    from aifactory.plan.model import SitePlan
    from aifactory.state import SiteState

EXAMPLES = {
    "resize": "aifactory resize lab/site.yaml --dry-run   # the hosts added, removed and reconfigured\n"
    "  aifactory resize lab/site.yaml --drain-timeout 600",
}
# 3: no record of the deployed plan, or the imported bundle does not carry the spec's plan.
# 4: the deploy or the added hosts' health gate failed (the same command goes on from there).
EXIT_CODES = {"resize": (0, 1, 2, 3, 4, 70, 130)}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "resize",
        parents=[common],
        help="grow or shrink pools to the spec's counts: drain what leaves; deploy, gate, admit what joins",
        description="Compare the spec's plan with the plan last deployed to every host, show the hosts "
        "added and removed and what changes on each host that stays (Slurm's node list and /etc/hosts, "
        "the front door's backends, Prometheus's targets), then: drain the removed hosts in Slurm (jobs "
        "past --drain-timeout are requeued) and at the front door; deploy the new plan (the imported "
        "bundle must carry it); health-gate and admit the added hosts; retire the removed ones. Removed "
        "hosts keep their data and stay powered. Interrupted or failed, the same command goes on.",
    )
    parser.add_argument("site", help="site spec (YAML) with the new pool counts")
    parser.add_argument(
        "--since",
        metavar="OLD_PLAN",
        help="the plan the hosts run (from `aifactory plan -o`), for a site deployed before aifactory "
        "kept a record of it",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long running Slurm jobs on removed hosts may take before they are requeued (default 3600)",
    )
    parser.add_argument("--dry-run", action="store_true", help="show the change and stop")
    parser.set_defaults(handler=cmd_resize)


def cmd_resize(args: argparse.Namespace) -> int:
    from aifactory.lifecycle.resize import ResizeStore, describe_resize
    from aifactory.plan import plan_site
    from aifactory.state import SiteState

    if args.drain_timeout < 0:
        raise UsageError(f"--drain-timeout {args.drain_timeout}: seconds cannot be negative")
    planned = plan_site(args.site, write_lock=False)
    state = SiteState.for_site(planned.plan.name)
    store = ResizeStore(state)
    old = store.started_from() or _deployed_plan(state, args.since)
    resize = describe_resize(old, planned.plan)
    if resize.empty:
        _say(args, {**resize.as_dict(), "status": "current"}, resize.render())
        return 0
    if args.dry_run:
        _say(args, {**resize.as_dict(), "status": "dry-run"}, resize.render())
        return 0
    _require_bundle_of(planned, state)
    with state.lock("resize"):
        return _run(args, planned, state, old, resize)


def _deployed_plan(state: SiteState, since: str | None) -> SitePlan:
    from aifactory.deploy.evidence import read_deployed_plan
    from aifactory.plan.diff import read_plan_file
    from aifactory.plan.model import SitePlan

    if since:
        return SitePlan.from_dict(read_plan_file(since))
    found = read_deployed_plan(state)
    if found is None:
        raise ResizeError(
            f"site {state.site!r} has no record of the plan its hosts run (deploy/plan.json)",
            code="resize-no-deployed-plan",
            exit_code=PrerequisiteError.exit_code,
            hint="deploy the site once first, or name the plan its hosts run with --since OLD_PLAN",
        )
    return found


def _require_bundle_of(planned: PlannedSite, state: SiteState) -> None:
    """Before anything drains: the deploy will refuse a bundle whose signed plan is not the spec's."""
    from aifactory.bundle.importer import current_import
    from aifactory.plan.model import SitePlan

    imported = current_import(state)
    carried = SitePlan.load(imported.plan_path).digest() if imported is not None else None
    if carried != planned.plan.digest():
        raise PrerequisiteError(
            "the imported bundle does not carry the spec's new plan"
            + ("" if imported is None else f" (bundle {imported.version} has plan {carried})"),
            code="resize-bundle-plan",
            hint="build a bundle from the grown or shrunk spec and import it (aifactory bundle build, "
            "aifactory bundle import), then resize",
        )


def _run(
    args: argparse.Namespace, planned: PlannedSite, state: SiteState, old: SitePlan, resize: Resize
) -> int:
    from aifactory.lab.connection import LabHosts
    from aifactory.lifecycle.resize import ResizeStore, run_resize
    from aifactory.lifecycle.site_parts import ProvisionedHosts, resize_parts
    from aifactory.pipeline.connection import lab_is_up, site_connection

    site = planned.plan.name
    on_lab = lab_is_up(site)  # the edge's one choice: the lab's hosts are its namespaces
    connection = site_connection(site, lab=on_lab)
    new_hosts = LabHosts(site) if on_lab else ProvisionedHosts()
    if args.format != "json":
        print(resize.render(), flush=True)
    with progress.shown(args, "resize") as shown:
        parts = resize_parts(
            planned, old=old, connection=connection, state=state, new_hosts=new_hosts, progress=shown
        )
        result = run_resize(resize, old, ResizeStore(state), parts, drain_timeout_s=args.drain_timeout)
    data = result.as_dict()
    _say(args, data, _result_text(data))
    return 0


def _say(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.format == "json":
        emit_json(data)
    else:
        print(text)


def _result_text(data: dict[str, Any]) -> str:
    lines = [f"resized ({'resumed ' if data['resumed'] else ''}run {data['run']}):"]
    if data["added"]:
        lines.append(f"  deployed, health-gated and admitted: {', '.join(data['added'])}")
    if data["removed"]:
        lines.append(
            f"  drained and retired (out of Slurm and the front door; data kept, left powered): "
            f"{', '.join(data['removed'])}"
        )
    if data["requeued"]:
        lines.append(f"  requeued past the drain timeout: {', '.join(data['requeued'])}")
    if data["deploy"].get("event_log"):
        lines.append(f"  deploy event log: {data['deploy']['event_log']}")
    return "\n".join(lines)
