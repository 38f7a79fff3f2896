"""`aifactory models SITE [MODEL]`: the site's model registry (versions, signatures, champion and
challenger, promotion history, what a server would refuse)."""

from __future__ import annotations

import argparse

from aifactory.cli.output import emit_json, table

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "models": "aifactory models inventory/lab/site.yaml vitals-mlp --format json",
}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    models = subparsers.add_parser(
        "models",
        parents=[common],
        help="list the model registry: signed versions, champion and challenger, promotions",
        description="List each model's registry on the site storage (docs/models.md): its versions by "
        "digest with their signature checked against the site's model-signing key, the training job "
        "and data each came from, the champion and challenger aliases and every signed promotion. "
        "Exits 0 when the registry is read (refusals are listed, not errors).",
    )
    models.add_argument("site", help="site spec (YAML)")
    models.add_argument("model", nargs="?", help="one model of the site (default: every model on a mount)")
    models.set_defaults(handler=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from aifactory.errors import UsageError
    from aifactory.pipeline.models import describe_model, model_dir
    from aifactory.plan import plan_site
    from aifactory.state import SiteState
    from aifactory.trust.issuing.models import ModelKey

    planned = plan_site(args.site, write_lock=False)
    plan = planned.plan
    chosen = [m for m in plan.models if args.model in (None, m.name) and m.host_path]
    if args.model and not chosen:
        known = ", ".join(m.name for m in plan.models) or "none"
        raise UsageError(f"site {plan.name} has no model {args.model!r} on mounted storage (models: {known})")
    trust = ModelKey(SiteState.for_site(plan.name).subdir("runtime")).trust
    described = [describe_model(model_dir(plan, m), trust, name=m.name) for m in chosen]
    if args.format == "json":
        emit_json({"site": plan.name, "models": described})
        return 0
    for model in described:
        print(f"{model['model']}  ({model['folder']})")
        rows = [
            [
                v["digest"][:19],
                v.get("alias") or "-",
                v["signature"] if v["signature"] == "verified" else f"refused: {v['reason']}",
                v.get("step", "-"),
                (v.get("job") or {}).get("slurm_job_id", (v.get("job") or {}).get("name", "-")),
                (v.get("dataset") or {}).get("name", "-"),
                ", ".join(f"{p['alias']} {p['time']}" for p in v.get("promotions", [])) or "-",
            ]
            for v in model["versions"]
        ]
        print(table(["VERSION", "ALIAS", "SIGNATURE", "STEP", "JOB", "DATASET", "PROMOTED"], rows))
        for refusal in model["refused"]:
            print(f"  refused {refusal['path']}: {refusal['reason']}")
    return 0
