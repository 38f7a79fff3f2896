"""`aifactory activation authorize/check` and `aifactory versions`: the signed authorization to go back
to an older bundle version, and which versions the site has and runs (aifactory.lifecycle).

`activation authorize` rather than `rollback authorize`: `aifactory rollback SITE --to VERSION` is the
rolling return itself (issue 26), and one word cannot be both a command and a group of subcommands.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aifactory import signing
from aifactory.bundle.manifest import BundleVersion
from aifactory.cli.bundle import passphrase_options, read_key_passphrase
from aifactory.cli.output import emit_json, table
from aifactory.lifecycle.activation import MAX_AGE, ActivationVerdict, activation_allows, authorize
from aifactory.lifecycle.versions import VersionHistory, version_history
from aifactory.spec.reference import resolve_site
from aifactory.state import SiteState

EXAMPLES = {
    "activation authorize": "aifactory activation authorize lab --to 20261201.1 --reason 'INC-42: B drops "
    "requests' --key ~/.ssh/admin_key --trust keys/allowed_signers",
    "activation check": "aifactory activation check lab --to 20261201.1 --trust keys/allowed_signers",
    "versions": "aifactory versions lab",
}
_TRUST_HELP = "the site's allowed_signers (as given to `bundle import --trust`), listing the admin's key"


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    group = subparsers.add_parser(
        "activation", help="sign or check the authorization to go back to an older bundle version"
    )
    commands = group.add_subparsers(dest="activation_command", required=True, metavar="COMMAND")
    sign = commands.add_parser(
        "authorize",
        parents=[common],
        allow_abbrev=False,
        help=f"sign an activation record letting VERSION past anti-rollback (valid {_hours()} h)",
    )
    _target_options(sign)
    sign.add_argument("--reason", required=True, help="why the site goes back (one line, kept in the record)")
    sign.add_argument("--key", required=True, help="the admin's private Ed25519 key (OpenSSH format)")
    passphrase_options(sign, "unlock the key")
    sign.set_defaults(handler=cmd_authorize)

    check = commands.add_parser(
        "check", parents=[common], allow_abbrev=False, help="say whether an activation record allows VERSION"
    )
    _target_options(check)
    check.set_defaults(handler=cmd_check)

    versions = subparsers.add_parser(
        "versions",
        parents=[common],
        allow_abbrev=False,
        help="the bundle versions imported for a site, which is current, and which host runs which",
    )
    versions.add_argument("site", help="site name, or its site spec (YAML)")
    versions.set_defaults(handler=cmd_versions)


def _target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("site", help="site name, or its site spec (YAML)")
    parser.add_argument("--to", required=True, metavar="VERSION", help="the older bundle version")
    parser.add_argument(
        "--digest",
        help="the bundle's manifest digest (sha256:...); default: the one imported for VERSION before",
    )
    parser.add_argument("--trust", required=True, metavar="ALLOWED_SIGNERS", help=_TRUST_HELP)


def _hours() -> int:
    return int(MAX_AGE.total_seconds() // 3600)


def _target(args: argparse.Namespace) -> tuple[SiteState, str, str]:
    state = SiteState.for_site(resolve_site(args.site).name)
    version = BundleVersion.parse(args.to).text
    digest = args.digest or version_history(state).require(version).digest
    return state, version, digest


def cmd_authorize(args: argparse.Namespace) -> int:
    state, version, digest = _target(args)
    key = signing.load_private_key(Path(args.key), read_key_passphrase(args, confirm=False))
    verdict = authorize(
        state, version=version, digest=digest, reason=args.reason, key=key, trust=Path(args.trust)
    )
    verdict.require()
    if args.format == "json":
        emit_json(verdict.as_dict())
    else:
        print(f"{verdict.message}\n  record {verdict.path} (+ .sig), valid until {_until(verdict)}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    state, version, digest = _target(args)
    verdict = activation_allows(state, version=version, digest=digest, trust=Path(args.trust))
    verdict.require()
    if args.format == "json":
        emit_json(verdict.as_dict())
    else:
        print(f"allowed: {verdict.message}\n  valid until {_until(verdict)}")
    return 0


def _until(verdict: ActivationVerdict) -> str:
    assert verdict.record is not None  # an allowed verdict always has its record
    return (verdict.record.signed_at + MAX_AGE).isoformat().replace("+00:00", "Z")


def cmd_versions(args: argparse.Namespace) -> int:
    history = version_history(SiteState.for_site(resolve_site(args.site).name))
    if args.format == "json":
        emit_json(history.as_dict())
    else:
        print(_versions_text(history))
    return 0


def _versions_text(history: VersionHistory) -> str:
    current = history.current.version if history.current else None
    newest = history.newest.version if history.newest else None
    running = history.by_version()
    rows = [
        (
            v.version,
            "current" if v.version == current else ("newest" if v.version == newest else ""),
            v.imported_at,
            v.digest[:19] + "...",
            ", ".join(running.get(v.version, ())) or "-",
        )
        for v in history.imported
    ]
    rows += [
        (version or "(none)", "not imported here", "-", "-", ", ".join(hosts))
        for version, hosts in running.items()
        if history.find_text(version) is None
    ]
    if not rows:
        return f"site {history.site}: no bundle imported and no host deployed yet"
    return f"site {history.site}\n" + table(("version", "", "imported", "digest", "hosts"), rows)
