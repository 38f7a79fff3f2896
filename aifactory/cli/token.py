"""`aifactory token issue|cert|revoke`: tenant tokens and site-CA certificates for the runtime.

    aifactory token issue SITE --tenant T [--expires 30d]
    aifactory token cert SITE (--tenant T | --server NAME [--address IP ...]) [--expires 30d] -o DIR
    aifactory token revoke SITE (TOKEN_ID | TOKEN | cert:SERIAL | CERT.pem) [--reason TEXT]

SITE is a site spec (YAML; the tenant is checked against it) or the name of a site whose state
folder exists. The token is printed once and never stored; its id is logged. Certificates and their
keys (0600) are written to DIR with the site CA's certificate; serials and fingerprints are logged.

When SITE is a spec with a front door, the output gives clients its address and port (`front_door`
in JSON), and a server certificate for a host behind it also names the front door's address and host
name: TLS goes through the front door to the node (docs/runtime.md, "Front door").
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifactory.cli.output import emit_json
from aifactory.errors import UsageError
from aifactory.frontdoor.certs import NO_NAMES, ServingNames, serving_names
from aifactory.plan.model import FrontDoorPlan
from aifactory.state import SiteState
from aifactory.trust.issuing.certs import (
    certificate_revocation_id,
    issue_client_certificate,
    issue_server_certificate,
)
from aifactory.trust.issuing.tokens import issue_token, parse_expiry, revoke_token, token_id_of
from aifactory.trust.tokens import TrustFiles

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "token issue": "aifactory token issue lab/site.yaml --tenant research",
    "token cert": "aifactory token cert lab/site.yaml --tenant research -o certs/",
    "token revoke": "aifactory token revoke lab/site.yaml TOKEN_ID",
}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    token = subparsers.add_parser(
        "token",
        parents=[common],
        help="issue and revoke tenant tokens and site-CA certificates for the runtime",
    )
    actions = token.add_subparsers(dest="token_command", metavar="ACTION")
    actions.required = True

    issue = actions.add_parser("issue", parents=[common], help="issue a token signed by the site's key")
    issue.add_argument("site", help="site spec (YAML) or site name")
    issue.add_argument("--tenant", required=True, help="the tenant the token's bearer acts for")
    issue.add_argument(
        "--expires",
        default="30d",
        help="duration (30d, 12h, 45m) or ISO date/date-time, at most 366 days (default 30d)",
    )
    issue.set_defaults(handler=cmd_issue)

    cert = actions.add_parser(
        "cert", parents=[common], help="issue a client (tenant) or server certificate from the site CA"
    )
    cert.add_argument("site", help="site spec (YAML) or site name")
    whom = cert.add_mutually_exclusive_group(required=True)
    whom.add_argument("--tenant", help="a client certificate naming this tenant (aifactory://SITE/tenant/T)")
    whom.add_argument("--server", help="a server certificate for this DNS name (aifactory-serve --tls-cert)")
    cert.add_argument(
        "--address",
        action="append",
        default=[],
        help="with --server: an IP address it answers on (repeatable)",
    )
    cert.add_argument(
        "--expires",
        default="30d",
        help="duration (30d, 12h, 45m) or ISO date/date-time, at most 366 days (default 30d)",
    )
    cert.add_argument(
        "-o", "--output", type=Path, required=True, help="folder for NAME.pem, NAME.key (0600) and ca.pem"
    )
    cert.set_defaults(handler=cmd_cert)

    revoke = actions.add_parser(
        "revoke", parents=[common], help="add a token or certificate to the site's revocation list"
    )
    revoke.add_argument("site", help="site spec (YAML) or site name")
    revoke.add_argument(
        "token_id",
        metavar="ID",
        help="a token's id (or the token itself), or a certificate: cert:SERIAL (hex) or its PEM file",
    )
    revoke.add_argument("--reason", help="why (kept in the list and the log)")
    revoke.set_defaults(handler=cmd_revoke)


@dataclass(frozen=True)
class _Site:
    name: str
    tenants: list[str] | None  # when SITE is a spec file
    front_door: FrontDoorPlan | None  # when SITE is a spec with a front_door section


def _site(site: str) -> _Site:
    """The site's name, and its tenants and front door when SITE is a spec file (see
    aifactory.spec.reference). Only a spec with a front door is planned (for its address)."""
    from aifactory.spec.reference import resolve_site

    reference = resolve_site(site)
    if reference.spec is None:
        return _Site(reference.name, None, None)
    front_door = None
    if reference.spec.front_door is not None and reference.spec_path is not None:
        from aifactory.plan import plan_site

        front_door = plan_site(reference.spec_path, write_lock=False).plan.front_door
    return _Site(reference.name, [t.name for t in reference.spec.tenants], front_door)


def _front_door_json(front_door: FrontDoorPlan | None) -> dict[str, Any]:
    """The front door clients reach, for --format json (nothing without one: the output is as before)."""
    if front_door is None:
        return {}
    return {
        "front_door": {
            "url": front_door.url,
            "host": front_door.host,
            "address": front_door.address,
            "port": front_door.port,
        }
    }


def _behind_text(also: ServingNames) -> str:
    """What a server certificate names for the front door it sits behind."""
    if not also.dns and not also.addresses:
        return ""
    names = ", ".join((*also.dns, *also.addresses))
    return f"; it also names the front door ({names}), as its clients reach it there"


def _front_door_text(front_door: FrontDoorPlan | None) -> str:
    if front_door is None:
        return ""
    return f"; clients reach the models through the front door at {front_door.url} ({front_door.host})"


def cmd_issue(args: argparse.Namespace) -> int:
    found = _site(args.site)
    site, tenants = found.name, found.tenants
    if tenants is not None and args.tenant not in tenants:
        raise UsageError(
            f"site {site!r} has no tenant {args.tenant!r}", hint=f"tenants: {', '.join(tenants) or 'none'}"
        )
    now = datetime.now(UTC)
    expires = parse_expiry(args.expires, now=now)
    state = SiteState.for_site(site)
    with state.lock("token issue"):
        trust = TrustFiles(state.subdir("runtime"))
        issued = issue_token(trust, site=site, tenant=args.tenant, expires=expires, now=now)
        state.record(
            command="token issue",
            result="ok",
            detail={"token_id": issued.claims.id, "tenant": args.tenant, "expires": expires.isoformat()},
        )
    if args.format == "json":
        emit_json(
            {
                "token": issued.token,
                **issued.claims.as_dict(),
                "allowed_signers": str(trust.allowed_signers),
                "revocations": str(trust.revocations),
                **_front_door_json(found.front_door),
            }
        )
    else:
        print(issued.token)
        print(
            f"token {issued.claims.id} for tenant {args.tenant} at site {site}, expires "
            f"{expires.replace(microsecond=0).isoformat()}; nodes verify it with {trust.allowed_signers}"
            f"{_front_door_text(found.front_door)}",
            file=sys.stderr,
        )
    return 0


def cmd_cert(args: argparse.Namespace) -> int:
    found = _site(args.site)
    site, tenants = found.name, found.tenants
    if args.tenant and tenants is not None and args.tenant not in tenants:
        raise UsageError(
            f"site {site!r} has no tenant {args.tenant!r}", hint=f"tenants: {', '.join(tenants) or 'none'}"
        )
    if args.address and not args.server:
        raise UsageError(
            "--address goes with --server", hint="client certificates name a tenant, not addresses"
        )
    now = datetime.now(UTC)
    expires = parse_expiry(args.expires, now=now)
    # A node behind the front door is reached at the front door's address and name too.
    also = serving_names(found.front_door, args.server) if args.server else NO_NAMES
    state = SiteState.for_site(site)
    with state.lock("token cert"):
        trust = TrustFiles(state.subdir("runtime"))
        if args.tenant:
            issued = issue_client_certificate(
                trust, site=site, tenant=args.tenant, expires=expires, out_dir=args.output, now=now
            )
        else:
            issued = issue_server_certificate(
                trust,
                site=site,
                server=args.server,
                addresses=tuple(dict.fromkeys((*args.address, *also.addresses))),
                also_named=also.dns,
                expires=expires,
                out_dir=args.output,
                now=now,
            )
        detail = {"serial": f"{issued.serial:x}", "sha256": issued.sha256, "expires": expires.isoformat()}
        state.record(
            command="token cert",
            result="ok",
            detail={**detail, ("tenant" if args.tenant else "server"): issued.subject},
        )
    kind = "client" if args.tenant else "server"
    if args.format == "json":
        emit_json(
            {
                "kind": kind,
                "subject": issued.subject,
                **detail,
                "revocation_id": issued.revocation_id,
                "certificate": str(issued.certificate),
                "key": str(issued.key),
                "ca": str(issued.ca),
                **_front_door_json(found.front_door),
            }
        )
    else:
        print(
            f"{kind} certificate for {issued.subject} at site {site}: {issued.certificate} "
            f"(key {issued.key}, 0600; site CA {issued.ca}), serial {issued.serial:x}, expires "
            f"{expires.replace(microsecond=0).isoformat()}; revoke with "
            f"`aifactory token revoke {args.site} {issued.revocation_id}`{_behind_text(also)}"
            f"{_front_door_text(found.front_door)}"
        )
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from aifactory.spec.reference import resolve_site

    site = resolve_site(args.site).name
    token_id = certificate_revocation_id(args.token_id) or token_id_of(args.token_id)
    state = SiteState.for_site(site)
    with state.lock("token revoke"):
        trust = TrustFiles(state.subdir("runtime"))
        count = revoke_token(trust, site=site, token_id=token_id, reason=args.reason)
        state.record(
            command="token revoke", result="ok", detail={"token_id": token_id, "reason": args.reason}
        )
    if args.format == "json":
        emit_json({"revoked": token_id, "list": str(trust.revocations), "count": count})
    else:
        print(
            f"revoked {token_id}; {trust.revocations} now lists {count} token(s) and certificate(s): "
            "copy it and its .sig to the nodes (deploy does), which reload it on change"
        )
    return 0
