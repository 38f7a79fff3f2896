"""`aifactory provision SITE [--preview]`: hosts over Redfish, fabric and storage artifacts."""

from __future__ import annotations

import argparse
from pathlib import Path

from aifactory.cli.output import emit_json, table
from aifactory.plan import plan_site
from aifactory.provision.driver import ProvisionOptions, ProvisionResult, provision_site

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "provision": "aifactory provision lab/site.yaml",
}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    cmd = subparsers.add_parser(
        "provision",
        parents=[common],
        help="provision the site's hosts (Redfish), fabrics and storage through Pulumi; policy first",
        description="Check the policies, then preview or apply the provisioning stack. State stays in "
        "the site's state folder; needs the pulumi CLI (see docs/provision.md).",
    )
    cmd.add_argument("site", help="site spec (YAML)")
    cmd.add_argument("--preview", action="store_true", help="show what would change; change nothing")
    cmd.add_argument(
        "--passphrase-file",
        type=Path,
        help="file with the site passphrase (secret store and Pulumi state secrets)",
    )
    cmd.add_argument(
        "--bmc-scheme",
        choices=("https", "http"),
        default="https",
        help="how to reach BMCs (default https; the lab's emulators use http)",
    )
    cmd.add_argument("--bmc-port", type=int, help="BMC Redfish port (default: the scheme's)")
    cmd.add_argument("--bmc-ca", type=Path, help="CA bundle that signs the BMCs' TLS certificates")
    cmd.add_argument(
        "--bmc-insecure",
        action="store_true",
        help="do not verify BMC TLS certificates (recorded in the state; avoid)",
    )
    cmd.add_argument(
        "--power-timeout", type=float, default=120.0, help="seconds to wait for a power change (default 120)"
    )
    cmd.add_argument(
        "--boot", choices=("pxe", "virtual-media"), default="pxe", help="boot source (default pxe)"
    )
    cmd.add_argument("--boot-image", help="installer image URL for --boot virtual-media")
    cmd.add_argument("--facts", type=Path, help="discovered facts with InfiniBand port GUIDs")
    cmd.add_argument(
        "--assets",
        type=Path,
        help="asset register: expected manufacturer, model, serial (and system) per host",
    )
    cmd.add_argument("--engine", choices=("embedded", "opa"), default="embedded", help="policy engine")
    cmd.add_argument("--opa-url", help="OPA server for --engine opa")
    cmd.add_argument("--waivers", type=Path, help="policy waivers file")
    cmd.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the site lock")
    cmd.set_defaults(handler=cmd_provision)


def options_from(args: argparse.Namespace) -> ProvisionOptions:
    bmc = {
        "scheme": args.bmc_scheme,
        "port": args.bmc_port,
        "verify_tls": not args.bmc_insecure,
        "ca_bundle": str(args.bmc_ca.resolve()) if args.bmc_ca else None,
        "power_timeout": args.power_timeout,
    }
    return ProvisionOptions(
        preview=args.preview,
        bmc=bmc,
        boot={"source": args.boot, "image": args.boot_image},
        facts_file=args.facts,
        assets_file=args.assets,
        passphrase_file=args.passphrase_file,
        policy_engine=args.engine,
        opa_url=args.opa_url,
        waivers=args.waivers,
        lock_wait=args.wait,
    )


def cmd_provision(args: argparse.Namespace) -> int:
    planned = plan_site(args.site, write_lock=False)
    result = provision_site(planned, options_from(args))
    if args.format == "json":
        emit_json(result.as_dict())
    else:
        print(render(result))
    return 0


def render(result: ProvisionResult) -> str:
    verb = "would change" if result.preview else "changed"
    rows = sorted(result.changes.items())
    lines = [f"site {result.site}: policy allows; {verb}:", table(("operation", "resources"), rows)]
    if result.outputs_path:
        lines.append(f"outputs: {result.outputs_path}")
    lines.append(f"artifacts: {result.artifacts_dir}")
    return "\n".join(lines)
