"""`aifactory init`, `aifactory validate`, `aifactory plan`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aifactory.cli.output import emit_json, table
from aifactory.errors import Location, SpecError, UsageError
from aifactory.plan import plan_site
from aifactory.plan.diff import diff_plans, read_plan_file
from aifactory.spec import load_spec
from aifactory.spec.starter import starter_spec

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "init": "aifactory init lab --jurisdiction NG -o lab/site.yaml",
    "validate": "aifactory validate lab/site.yaml --format json",
    "plan": "aifactory plan lab/site.yaml -o lab/plan.json",
}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    init = subparsers.add_parser("init", parents=[common], help="write a starter site spec that validates")
    init.add_argument("name", help="site name (lowercase, at most 20 characters)")
    init.add_argument("--jurisdiction", required=True, help="country code or bloc, e.g. NG or EU")
    init.add_argument("-o", "--output", help="file to write (default: ./<name>/site.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=cmd_init)

    validate = subparsers.add_parser(
        "validate", parents=[common], help="check a site spec; list every problem"
    )
    validate.add_argument("site", help="site spec (YAML)")
    validate.set_defaults(handler=cmd_validate)

    plan = subparsers.add_parser(
        "plan", parents=[common], help="resolve a site spec into hosts and addresses"
    )
    plan.add_argument("site", help="site spec (YAML)")
    plan.add_argument("-o", "--output", help="write the plan as JSON to this file")
    plan.add_argument("--diff", metavar="OLD_PLAN", help="show hosts and addresses changed since OLD_PLAN")
    plan.add_argument(
        "--frozen", action="store_true", help="fail instead of updating the allocation lock beside the spec"
    )
    plan.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="when updating the allocation lock, wait this long for another changing command",
    )
    plan.set_defaults(handler=cmd_plan)


def cmd_init(args: argparse.Namespace) -> int:
    text = starter_spec(args.name, args.jurisdiction)
    target = Path(args.output) if args.output else Path(args.name) / "site.yaml"
    if target.exists() and not args.force:
        raise UsageError(f"{target} exists", hint="pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    load_spec(target)  # the starter must validate; fail loudly if it does not
    if args.format == "json":
        emit_json({"written": str(target)})
    else:
        print(f"wrote {target}; next: aifactory validate {target}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = load_spec(args.site)
    spec = loaded.spec
    counts = {
        "datacenters": len(spec.datacenters),
        "fabrics": len(spec.fabrics),
        "node_pools": len(spec.node_pools),
        "hosts": sum(p.count for p in spec.node_pools),
        "storage": len(spec.storage),
        "tenants": len(spec.tenants),
        "datasets": len(spec.datasets),
        "models": len(spec.models),
    }
    if args.format == "json":
        emit_json(
            {
                "valid": True,
                "file": args.site,
                "site": spec.site.name,
                "digest": loaded.digest,
                "counts": counts,
            }
        )
    else:
        summary = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items())
        print(f"{args.site}: valid site '{spec.site.name}' ({summary})")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    planned = plan_site(args.site, write_lock=not args.frozen, wait=args.wait)
    if args.frozen and planned.lock_changed:
        raise SpecError(
            f"the allocation lock {planned.lock_path} does not cover this spec",
            location=Location(file=str(planned.lock_path)),
            hint="run `aifactory plan` without --frozen to allocate, and commit the lock file",
        )
    plan = planned.plan
    if args.output:
        Path(args.output).write_text(plan.to_json())
    if args.diff:
        difference = diff_plans(read_plan_file(args.diff), plan.to_dict())
        if args.format == "json":
            emit_json(difference.as_dict())
        else:
            print(difference.render())
        return 0
    if args.format == "json" and not args.output:
        sys.stdout.write(plan.to_json())
        return 0
    summary = plan.summary()
    if args.format == "json":
        emit_json({"written": args.output, "digest": plan.digest(), "summary": summary})
        return 0
    rows = [
        (
            p.name,
            p.role,
            p.count,
            p.datacenter,
            ", ".join(p.fabrics),
            f"{p.hosts[0]} .. {p.hosts[-1]}",
        )
        for p in plan.pools
    ]
    print(table(("pool", "role", "hosts", "datacenter", "fabrics", "names"), rows))
    print(
        f"\n{summary['hosts']} hosts, {summary['addresses']} addresses, {summary['gpus']} GPUs; "
        f"plan {plan.digest()}"
    )
    if planned.lock_changed and not args.frozen:
        print(f"allocation lock updated: {planned.lock_path} (commit it: addresses stay stable)")
    if args.output:
        print(f"wrote {args.output}")
    return 0
