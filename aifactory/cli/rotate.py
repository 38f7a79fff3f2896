"""`aifactory rotate SITE --what token-key|ca|server-certs [--finish]`: rotate the site's token key,
its CA or its server certificates with an overlap, rolled out one host at a time through the deploy
path (aifactory.trust.issuing.rotation, docs/operations.md "Rotating keys and certificates").

SITE is the site spec (the rollout deploys its plan). Each run records, in the operator log, who ran
it, when, what, the old and new fingerprints, and the phase it started in and the one it reached
(SC-12); a run that fails records that too, and the same command resumes it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from aifactory.cli.output import emit_json
from aifactory.errors import AifactoryError
from aifactory.state import SiteState, who
from aifactory.trust.issuing.rotation import WHATS, RotationRecord, What, load_record, rotate
from aifactory.trust.tokens import TrustFiles

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {"rotate": "aifactory rotate lab/site.yaml --what token-key"}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "rotate",
        parents=[common],
        allow_abbrev=False,
        help="rotate the token key, the site CA or the server certificates, with an overlap",
    )
    parser.add_argument("site", help="the site spec (YAML): its hosts are rolled out one at a time")
    parser.add_argument("--what", required=True, choices=WHATS, help="what to rotate")
    parser.add_argument(
        "--finish",
        action="store_true",
        help="end the overlap: the old key or CA is trusted nowhere after this rollout",
    )
    parser.add_argument(
        "--status", action="store_true", help="say which phase the rotation is in; change nothing"
    )
    parser.set_defaults(handler=cmd_rotate)


def _detail(record: RotationRecord | None, *, started_in: str | None) -> dict[str, Any]:
    if record is None:
        return {"started_in": started_in}
    return {
        "rotation": record.id,
        "what": record.what,
        "old": record.old,
        "new": record.new,
        "started_in": started_in,
        "phase": record.phase,
        "started": record.started,
        "finished": record.finished,
        "hosts_done": list(record.hosts_done),
    }


def cmd_rotate(args: argparse.Namespace) -> int:
    from aifactory.spec.reference import resolve_site

    what: What = args.what
    site = resolve_site(args.site).name
    state = SiteState.for_site(site)
    trust = TrustFiles(state.subdir("runtime"))
    if args.status:
        return _show(load_record(trust, what), what=what, json_out=args.format == "json")
    from aifactory.deploy.rollout import HostByHost
    from aifactory.pipeline.connection import site_connection
    from aifactory.plan import plan_site

    planned = plan_site(args.site, write_lock=False)
    rollout = HostByHost(planned, site_connection(planned.plan.name))
    command = f"rotate {what}" + (" --finish" if args.finish else "")
    with state.lock(command):
        before = load_record(trust, what)
        started_in = before.phase if before is not None else None
        try:
            record = rotate(
                trust,
                site=site,
                what=what,
                rollout=rollout,
                finish=args.finish,
                user=who(),
                report=lambda line: print(line, file=sys.stderr, flush=True),
            )
        except AifactoryError:
            reached = load_record(trust, what)
            state.record(command="rotate", result="failed", detail=_detail(reached, started_in=started_in))
            raise
        state.record(command="rotate", result=record.phase, detail=_detail(record, started_in=started_in))
    if args.format == "json":
        emit_json(_detail(record, started_in=started_in))
    else:
        print(f"{what} rotation {record.id}: phase {record.phase} (old {record.old}, new {record.new})")
    return 0


def _show(record: RotationRecord | None, *, what: What, json_out: bool) -> int:
    if json_out:
        emit_json(_detail(record, started_in=None) | {"what": what})
    elif record is None:
        print(f"no {what} rotation on record")
    else:
        done = f", {len(record.hosts_done)} host(s) done in it" if record.hosts_done else ""
        print(
            f"{what} rotation {record.id} (started {record.started} by {record.started_by}): phase "
            f"{record.phase}{done}; old {record.old}, new {record.new}"
        )
    return 0
