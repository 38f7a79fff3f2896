"""`aifactory inventory SITE -o DIR`: render the site's Ansible inventory."""

from __future__ import annotations

import argparse
from pathlib import Path

from aifactory.cli.output import emit_json
from aifactory.deploy.imported_bundle import describe_current_bundle
from aifactory.inventory.site import site_inventory
from aifactory.pipeline.connection import site_connection
from aifactory.plan import plan_site
from aifactory.state import SiteState

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "inventory": "aifactory inventory lab/site.yaml -o lab/inventory",
}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "inventory",
        parents=[common],
        help="render the site's Ansible inventory (groups per pool, role, datacenter, fabric, tenant)",
    )
    parser.add_argument("site", help="site spec (YAML)")
    parser.add_argument(
        "-o", "--output", required=True, help="folder to write (hosts.yml, group_vars/, host_vars/)"
    )
    parser.set_defaults(handler=cmd_inventory)


def cmd_inventory(args: argparse.Namespace) -> int:
    planned = plan_site(args.site, write_lock=False)
    plan = planned.plan
    state = SiteState.for_site(planned.plan.name)
    bundle = describe_current_bundle(state)
    rendered = site_inventory(plan, connection=site_connection(planned.plan.name), bundle=bundle, state=state)
    written = rendered.write(Path(args.output))
    inventory = rendered.inventory
    summary = {
        "output": args.output,
        "hosts": len(inventory.hosts),
        "groups": sorted(inventory.groups),
        "files": len(written),
        "bundle": bundle["version"] if bundle else None,
        "provisioning_outputs": rendered.provisioned,
        "connection": rendered.connection,
    }
    if args.format == "json":
        emit_json(summary)
        return 0
    print(
        f"wrote {args.output}: {summary['hosts']} hosts in {len(summary['groups'])} groups "
        f"({', '.join(summary['groups'])})"
    )
    print(
        f"bundle: {summary['bundle'] or 'none imported yet (aifactory bundle import)'}; "
        f"provisioning outputs: {'used' if rendered.provisioned else 'none'}; "
        f"hosts reached from: {rendered.connection}"
    )
    print(f"see it: ansible-inventory -i {args.output} --graph")
    return 0
