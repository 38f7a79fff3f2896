"""`aifactory rotate SITE --what bundle-key|token-key|ca|server-certs|ssh-host-keys [--finish]`: rotate
the site's bundle-signing key, token key, CA, server certificates or the hosts' SSH host keys with an
overlap, rolled out one host at a time through the deploy path (aifactory.trust.issuing.rotation,
docs/operations.md "Rotating keys and certificates").

SITE is the site spec (the rollout deploys its plan). Each run records, in the operator log, who ran
it, when, what, the old and new fingerprints, and the phase it started in and the one it reached
(SC-12); a run that fails records that too, and the same command resumes it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aifactory.cli.output import emit_json
from aifactory.errors import AifactoryError
from aifactory.state import SiteState, who
from aifactory.trust.issuing.known_hosts import key_fingerprint
from aifactory.trust.issuing.rotation import WHATS, RotationRecord, Targets, What, load_record, rotate
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
        help="rotate the bundle key, token key, CA, server certificates or SSH host keys, with an overlap",
        description="Rotate one of the site's keys with an overlap (both old and new trusted) rolled out "
        "one host at a time: bundle-key (the bundle-signing key: allowed_signers names both until "
        "--finish), token-key, ca, server-certs (no overlap), ssh-host-keys (each host generates its new "
        "host key; the control host learns it over the authenticated SSH connection, never by keyscan, "
        "and known_hosts trusts both until --finish). Run it again to resume after a failure.",
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
    parser.add_argument(
        "--bundle-key",
        metavar="FOLDER",
        help="bundle-key: the folder of the bundle-signing key (signing_key, signing_key.pub, "
        "allowed_signers; default <state>/bundle-key, the one `aifactory up` makes)",
    )
    parser.add_argument(
        "--known-hosts",
        metavar="FILE",
        help="ssh-host-keys: the known_hosts file the deploy checks hosts with (default: the one the "
        "site's connection names, e.g. the lab's)",
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
        **(
            {"host_keys": {h: key_fingerprint(k) for h, k in record.host_keys.items()}}
            if record.host_keys
            else {}
        ),
    }


def cmd_rotate(args: argparse.Namespace) -> int:
    from aifactory.spec.reference import resolve_site

    what: What = args.what
    site = resolve_site(args.site).name
    state = SiteState.for_site(site)
    trust = TrustFiles(state.subdir("runtime"))
    if args.status:
        return _show(load_record(trust, what), what=what, json_out=args.format == "json")
    from aifactory.deploy.converged import PROMOTE_HOST_KEY
    from aifactory.deploy.rollout import HostByHost, HostKeysOnHosts
    from aifactory.pipeline.connection import site_connection
    from aifactory.plan import plan_site

    planned = plan_site(args.site, write_lock=False)
    connection = site_connection(planned.plan.name)
    targets = Targets()
    rollout = HostByHost(planned, connection)
    if what == "bundle-key":
        # hosts are given the site's bundle trust file, whichever keys it names in this phase
        folder = Path(args.bundle_key) if args.bundle_key else state.path("bundle-key")
        targets = Targets(bundle_key=folder)
        rollout = HostByHost(planned, connection, trust=folder / "allowed_signers", full=True)
    elif what == "ssh-host-keys":
        known = Path(args.known_hosts) if args.known_hosts else connection.known_hosts
        targets = Targets(known_hosts=known, host_keys=HostKeysOnHosts.of(planned, connection))
        rollout = HostByHost(planned, connection, extra_vars={PROMOTE_HOST_KEY: True}, full=True)
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
                targets=targets,
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
