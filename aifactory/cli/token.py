"""`aifactory token issue SITE --tenant T [--expires ...]`, `aifactory token revoke SITE TOKEN_ID`.

SITE is a site spec (YAML; the tenant is checked against it) or the name of a site whose state
folder exists. The token is printed once and never stored; its id is logged.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from aifactory.cli.output import emit_json
from aifactory.errors import UsageError
from aifactory.runtime.tokens import TrustFiles, issue_token, parse_expiry, revoke_token, token_id_of
from aifactory.state import SiteState


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    token = subparsers.add_parser(
        "token", parents=[common], help="issue and revoke tenant tokens for the runtime"
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

    revoke = actions.add_parser("revoke", parents=[common], help="add a token to the site's revocation list")
    revoke.add_argument("site", help="site spec (YAML) or site name")
    revoke.add_argument("token_id", metavar="TOKEN_ID", help="the token's id (or the token itself)")
    revoke.add_argument("--reason", help="why (kept in the list and the log)")
    revoke.set_defaults(handler=cmd_revoke)


def _site_and_tenants(site: str) -> tuple[str, list[str] | None]:
    path = Path(site)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        from aifactory.spec import load_spec

        spec = load_spec(path).spec
        return spec.site.name, [t.name for t in spec.tenants]
    return site, None


def cmd_issue(args: argparse.Namespace) -> int:
    site, tenants = _site_and_tenants(args.site)
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
            }
        )
    else:
        print(issued.token)
        print(
            f"token {issued.claims.id} for tenant {args.tenant} at site {site}, expires "
            f"{expires.replace(microsecond=0).isoformat()}; nodes verify it with {trust.allowed_signers}",
            file=sys.stderr,
        )
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    site, _tenants = _site_and_tenants(args.site)
    token_id = token_id_of(args.token_id)
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
            f"revoked {token_id}; {trust.revocations} now lists {count} token(s): copy it and its .sig "
            f"to the "
            f"nodes (deploy does), which reload it on change"
        )
    return 0
