"""`aifactory loop run|sign-off|turns` and `aifactory lineage`: the closed loop (docs/loop.md).

    aifactory loop run SITE MODEL --job JOB.yaml       one turn (or the rest of the current one)
    aifactory loop due SITE MODEL                      whether a turn is due by the trigger (exit 0, or 1)
    aifactory loop sign-off SITE CHALLENGER --key KEY  a signed sign-off of a challenger awaiting one
    aifactory loop turns SITE MODEL                    every turn and where it stands
    aifactory lineage SITE DECISION_ID                 decision -> model -> training -> data, verified

Library: aifactory.loop.turn, aifactory.loop.trigger, aifactory.loop.signoff, aifactory.loop.lineage.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifactory.cli.output import emit_json

if TYPE_CHECKING:
    from aifactory.loop.trigger import Due
    from aifactory.plan.model import SitePlan

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "loop run": "aifactory loop run inventory/lab/site.yaml vitals-mlp --job job.yaml",
    "loop due": "aifactory loop due inventory/lab/site.yaml vitals-mlp --format json",
    "loop sign-off": "aifactory loop sign-off inventory/lab/site.yaml sha256:4f0c... --key ~/.ssh/id_ed25519",
    "loop turns": "aifactory loop turns inventory/lab/site.yaml vitals-mlp --format json",
    "lineage": "aifactory lineage inventory/lab/site.yaml 9c1f...e2 --decision-log decisions.jsonl",
}
SIGNERS_HELP = "the sign-off trust file (OpenSSH allowed_signers; default <state>/loop/allowed_signers)"
STORAGE_ROOT_HELP = (
    "a folder in front of the planned storage paths, as this machine and the nodes see them "
    "(default: the storage as this machine mounts it, or the lab's)"
)


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    loop = subparsers.add_parser(
        "loop", parents=[common], help="the closed loop: retrain, evaluate, promote by policy"
    )
    actions = loop.add_subparsers(dest="loop_command", metavar="ACTION")
    actions.required = True

    run = actions.add_parser(
        "run",
        parents=[common],
        help="run one loop turn of a model (or continue the current one)",
        description="One turn of the model's loop (docs/loop.md): a new signed version of its training "
        "data, a retraining job from the champion's checkpoint through Slurm (the runtime policy "
        "decides first, as for `aifactory train`), the training manifest signed, an evaluation job on "
        "the loop's evaluation set, then the promotion policy: promote (exit 0), refuse with its "
        "reason codes (exit 1; the champion keeps serving), or wait for a sign-off (exit 1). Each step "
        "is recorded; running it again continues where it stopped.",
    )
    run.add_argument("site", help="site spec (YAML)")
    run.add_argument("model", help="a model with a `loop` entry in the spec")
    run.add_argument(
        "--job",
        type=Path,
        help="training job file (aifactory.job/v1): the tenant's token, hosts, network and training "
        "settings; the turn trains `train.steps` more steps from the champion's (default "
        "<state>/loop/MODEL/job.yaml, where the timer's runs find it)",
    )
    run.add_argument(
        "--if-due",
        action="store_true",
        help="run only when a turn is due by the model's trigger (as `aifactory loop due` says), else "
        "exit 0 saying why not; a turn already running is not due (the timer's service runs this)",
    )
    run.add_argument("--allowed-signers", type=Path, help=SIGNERS_HELP)
    run.add_argument("--storage-root", type=Path, help=STORAGE_ROOT_HELP)
    run.add_argument(
        "--runtime-prefix",
        type=Path,
        default=Path("/opt/aifactory/current"),
        help="the runtime's install folder on the nodes (default /opt/aifactory/current)",
    )
    run.set_defaults(handler=cmd_run)

    due = actions.add_parser(
        "due",
        parents=[common],
        help="say whether a loop turn of a model is due by its trigger",
        description='Whether a turn of the model\'s loop is due now and why (docs/loop.md, "The timer"): '
        "enough new feedback records since the last turn's data version (the trigger's new_samples), an "
        "unfinished turn to continue, or the schedule alone; not due while another run holds the turn "
        "lock, without a champion, or with too few new records. Exit 0 when due, 1 when not. The "
        "schedule itself (trigger.on_calendar) is the timer's.",
    )
    due.add_argument("site", help="site spec (YAML)")
    due.add_argument("model", help="a model with a `loop` entry in the spec")
    due.add_argument("--storage-root", type=Path, help=STORAGE_ROOT_HELP)
    due.set_defaults(handler=cmd_due)

    sign_off = actions.add_parser(
        "sign-off",
        parents=[common],
        help="sign off a challenger that awaits a person's sign-off",
        description="Sign off one challenger (its version digest, or a prefix of it) with your SSH key "
        "(SSHSIG, namespace aifactory-sign-off). The signer is the name the sign-off trust file gives "
        "the key; the promotion policy then checks it against the spec's sign_off.by. Run `aifactory "
        "loop run` again to finish the turn.",
    )
    sign_off.add_argument("site", help="site spec (YAML)")
    sign_off.add_argument("challenger", help="the challenger's version digest (sha256:...) or a prefix")
    sign_off.add_argument("--key", type=Path, required=True, help="your SSH private key (ed25519)")
    sign_off.add_argument("--allowed-signers", type=Path, help=SIGNERS_HELP)
    sign_off.set_defaults(handler=cmd_sign_off)

    listing = actions.add_parser("turns", parents=[common], help="list a model's loop turns")
    listing.add_argument("site", help="site spec (YAML)")
    listing.add_argument("model", help="a model with a `loop` entry in the spec")
    listing.set_defaults(handler=cmd_turns)

    lineage = subparsers.add_parser(
        "lineage",
        parents=[common],
        help="trace a decision back to the model and data behind it, every link verified",
        description="From a decision to the model version that answered (its signature and promotion), "
        "the loop's signed promotion decision, the training manifest and the dataset versions it was "
        "trained and evaluated on (signatures, lineage, file digests, residency), each link verified "
        "offline (docs/loop.md). Exits 1 naming each link that does not verify.",
    )
    lineage.add_argument("site", help="site spec (YAML)")
    lineage.add_argument("decision_id", help="the decision's id (as the answer and the decision log give it)")
    lineage.add_argument(
        "--decision-log",
        type=Path,
        action="append",
        default=[],
        help="a node's decision log (decisions.jsonl, as copied off the node); repeatable",
    )
    lineage.add_argument("--storage-root", type=Path, help=STORAGE_ROOT_HELP)
    lineage.set_defaults(handler=cmd_lineage)


def _state(plan: SitePlan) -> tuple[Path, Path]:
    from aifactory.state import SiteState

    state = SiteState.for_site(plan.name)
    return state.subdir("runtime"), state.subdir("loop")


def _signers(state_dir: Path, given: Path | None) -> Path:
    return given or state_dir / "allowed_signers"


def cmd_run(args: argparse.Namespace) -> int:
    from aifactory.errors import TurnRunning, UsageError
    from aifactory.loop.site import site_turn_setup
    from aifactory.loop.turn import Places, run_turn, turns_dir
    from aifactory.pipeline.connection import site_connection
    from aifactory.plan import plan_site
    from aifactory.scheduler.slurm import client_for
    from aifactory.state import SiteState

    planned = plan_site(args.site, write_lock=False)
    plan = planned.plan
    _, state_dir = _state(plan)
    if args.if_due:
        due = _due(plan, args.model, args.storage_root)
        if not due.due:  # the timer's tick with nothing to do: not a failure
            _print_due(args, plan, due)
            return 0
    job = args.job or turns_dir(state_dir, args.model) / "job.yaml"
    if not job.is_file():
        raise UsageError(
            f"no training job file {job}",
            hint="pass --job JOB.yaml, or put the model's job file there for the timer (docs/loop.md)",
        )
    setup = site_turn_setup(
        planned,
        model=args.model,
        job_template=job,
        client=client_for(site_connection(plan.name)),
        state=SiteState.for_site(plan.name),
        places=Places(plan, root=args.storage_root),
        runtime_prefix=args.runtime_prefix,
        allowed_signers=args.allowed_signers,
    )
    try:
        turn = run_turn(setup)
    except TurnRunning:
        if not args.if_due:
            raise
        # The timer started while a run (by hand, or a slow earlier tick) works on the turn: leave it.
        print(f"{args.model}: a turn is running; not started again")
        return 0
    if args.format == "json":
        emit_json({"site": plan.name, **turn.as_dict()})
    else:
        print(turn.line())
    return 0 if turn.status == "promoted" else 1


def cmd_due(args: argparse.Namespace) -> int:
    from aifactory.plan import plan_site

    plan = plan_site(args.site, write_lock=False).plan
    due = _due(plan, args.model, args.storage_root)
    _print_due(args, plan, due)
    return 0 if due.due else 1


def _due(plan: SitePlan, model: str, storage_root: Path | None) -> Due:
    """The trigger's answer for `model` of `plan`, reading the state, the registry and the data here."""
    from aifactory.errors import UsageError
    from aifactory.loop.trigger import turn_due
    from aifactory.loop.turn import Places, training_dataset
    from aifactory.trust.issuing.models import ModelKey

    loop = next((entry for entry in plan.loop or () if entry.model == model), None)
    if loop is None:
        raise UsageError(f"site {plan.name} has no loop for model {model[:80]!r}")
    runtime_dir, state_dir = _state(plan)
    places = Places(plan, root=storage_root)
    planned = next(m for m in plan.models if m.name == model)
    dataset = next(d for d in plan.datasets if d.name == training_dataset(planned))
    return turn_due(
        loop=loop,
        model=planned,
        state_dir=state_dir,
        model_dir=places.here(planned.storage, planned.path),
        dataset_dir=places.here(dataset.storage, dataset.path),
        trust=ModelKey(runtime_dir).trust,
    )


def _print_due(args: argparse.Namespace, plan: SitePlan, due: Due) -> None:
    if args.format == "json":
        emit_json({"site": plan.name, **due.as_dict()})
    else:
        print(f"{due.model}: {'due' if due.due else 'not due'} ({due.reason}): {due.detail}")


def cmd_sign_off(args: argparse.Namespace) -> int:
    from aifactory.errors import UsageError
    from aifactory.loop.signoff import make_sign_off, write_sign_off
    from aifactory.loop.turn import SIGN_OFF_FILE, turns
    from aifactory.plan import plan_site

    plan = plan_site(args.site, write_lock=False).plan
    _, state_dir = _state(plan)
    waiting = [
        (entry.model, turn)
        for entry in plan.loop or ()
        for turn in turns(state_dir, entry.model)
        if turn.status == "awaiting-sign-off"
        and str(turn.steps["register"]["challenger"]).startswith(args.challenger)
        and len(args.challenger) >= 8
    ]
    if len(waiting) != 1:
        raise UsageError(
            f"{'no' if not waiting else 'more than one'} challenger of site {plan.name} awaiting a sign-off "
            f"matches {args.challenger[:80]!r}",
            hint="`aifactory loop turns SITE MODEL` lists each turn and its challenger",
        )
    model, turn = waiting[0]
    signed = make_sign_off(
        site=plan.name,
        model=model,
        challenger=turn.steps["register"]["challenger"],
        key=args.key,
        allowed_signers=_signers(state_dir, args.allowed_signers),
    )
    write_sign_off(turn.folder / SIGN_OFF_FILE, signed)
    if args.format == "json":
        emit_json({"site": plan.name, "model": model, "turn": turn.number, **signed.as_dict()})
    else:
        print(
            f"{model} turn {turn.number}: {signed.document['challenger']} signed off by "
            f"{signed.document['by']}; run `aifactory loop run` to finish the turn"
        )
    return 0


def cmd_turns(args: argparse.Namespace) -> int:
    from aifactory.loop.turn import turns
    from aifactory.plan import plan_site

    plan = plan_site(args.site, write_lock=False).plan
    _, state_dir = _state(plan)
    found = turns(state_dir, args.model)
    if args.format == "json":
        emit_json({"site": plan.name, "model": args.model, "turns": [t.as_dict() for t in found]})
        return 0
    for turn in found:
        print(turn.line())
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from aifactory.errors import LineageBroken
    from aifactory.loop.lineage import lineage
    from aifactory.loop.turn import Places
    from aifactory.plan import plan_site
    from aifactory.trust.issuing.models import ModelKey

    plan = plan_site(args.site, write_lock=False).plan
    runtime_dir, _ = _state(plan)
    places = Places(plan, root=args.storage_root)  # else the lab's storage when a lab of the site is up
    found = lineage(
        args.decision_id,
        model_dirs={m.name: places.here(m.storage, m.path) for m in plan.models if m.host_path},
        dataset_dirs={d.name: places.here(d.storage, d.path) for d in plan.datasets if d.host_path},
        trust=ModelKey(runtime_dir).trust,
        decision_logs=args.decision_log,
    )
    if args.format == "json":
        emit_json({"site": plan.name, **found.as_dict()})
        return 0 if found.verified else 1
    print(f"decision {found.decision_id}")
    for link in found.links:
        print(f"  {'ok    ' if link.verified else 'BROKEN'}  {link.kind:<18} {link.name}: {link.detail}")
        if facts := _facts(link.facts):
            print(facts)
    if not found.verified:
        names = "; ".join(f"{link.kind} {link.name}: {link.detail}" for link in found.broken)
        raise LineageBroken(f"the lineage of decision {found.decision_id} does not verify: {names}")
    return 0


def _facts(facts: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in facts.items() if v not in (None, [], {}) and k != "metrics")
    return f"          {shown}" if shown else ""
