"""`aifactory up`'s loop stage: one turn of the closed loop after serving (docs/loop.md, "A turn in
`aifactory up`").

For each model with a `loop` entry in the plan, on the lab:

1. the evaluation set, made once: while the loop's evaluation dataset has no version, the node's
   `aifactory-train --generate-dataset` writes a held-out draw of the same task (the samples right
   after the largest draw `up` trains on) and the control host signs it as its version 1
   (`aifactory data version`'s library); it is never written again, and nothing trains on it;
2. the turn's new data: the node writes a larger draw of the training dataset over the train stage's
   (`--extend`: its first samples are the old ones; the dataset's versions and feedback are kept);
3. one turn from the champion, through `aifactory loop run`'s library (aifactory.loop.site,
   aifactory.loop.turn.run_turn, SlurmJobs): the turn's record makes it resumable, so a run after a
   failure continues the turn the failed run left instead of starting another;
4. the serving node answers with the champion after the turn (the serve stage's probe).

A refused challenger is an outcome of a turn, not a failure: the stage is ok and gives the reason codes.
A failed job or a step that does not verify stops `up` with the turn's error and a hint to run it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.errors import AifactoryError, LoopError, UsageError
from aifactory.loop.turn import ENDED, Turn
from aifactory.pipeline.runner import Stage, StageResult
from aifactory.pipeline.stages import (
    UpContext,
    champion_now,
    generate_on_node,
    probe_serving,
    slurm_client,
    train_job,
    training_hosts,
    write_token_file,
)
from aifactory.plan.model import DatasetPlan, LoopPlan, ModelPlan, SitePlan

LOOP_SAMPLES = 4096  # the turn's draw of the training dataset: 4x the train stage's, extending it
HOLDOUT_SAMPLES = 512  # the evaluation set: samples LOOP_SAMPLES.. of the same draw
LOOP_STEPS = 120  # the turn trains this many steps more than the champion's


@dataclass(frozen=True)
class LoopTarget:
    """One model's turn: its loop entry, the data it retrains on and is measured on, and the node that
    writes the data and trains (the first compute host that mounts the model's storage)."""

    entry: LoopPlan
    model: ModelPlan
    dataset: DatasetPlan
    holdout: DatasetPlan
    host: str


def loop_targets(plan: SitePlan) -> list[LoopTarget]:
    """Every model with a `loop` entry, in the spec's order."""
    from aifactory.loop.turn import training_dataset

    datasets = {d.name: d for d in plan.datasets}
    targets = []
    for entry in plan.loop or ():
        model = next(m for m in plan.models if m.name == entry.model)
        hosts = training_hosts(plan, model)
        if not hosts:
            raise UsageError(
                f"no compute host mounts storage {model.storage} of model {model.name}: none can retrain it",
                hint="mount the model's storage on a cpu or gpu pool (`mounted_by`)",
            )
        dataset = datasets[training_dataset(model)]
        targets.append(LoopTarget(entry, model, dataset, datasets[entry.evaluation.dataset], hosts[0]))
    return targets


def turn_job(base: dict[str, Any], target: LoopTarget, *, token_file: Path) -> dict[str, Any]:
    """The turn's job template: the train stage's job (its network and training settings, so the
    champion's checkpoint fits) on one node, LOOP_STEPS steps more than the champion's."""
    return {
        **base,
        "name": f"up-loop-{target.model.name}"[:60],
        "dataset": target.dataset.name,
        "model": target.model.name,
        "token_file": str(token_file),
        "hosts": [target.host],
        "train": {**base["train"], "steps": LOOP_STEPS},
    }


def _folder(context: UpContext) -> Path:
    folder = context.state.subdir("up/loop")
    folder.chmod(0o755)  # the lab's hosts read the job files from here (as root)
    return folder


def _jobs(context: UpContext, target: LoopTarget) -> dict[str, Any]:
    """The turn's job, with its token's place in the stage's folder."""
    token = _folder(context) / f"{target.model.name}.{target.dataset.owner}.token"
    return turn_job(train_job(context), target, token_file=token)


# ------------------------------------------------------------------ the summary


def turn_outcome(turn: Turn, *, champion: str | None) -> dict[str, Any]:
    """What `up` records of a turn: its number, status, reason codes and the champion after it."""
    decide = turn.steps.get("decide") or {}
    canary = turn.steps.get("canary") or {}
    return {
        "turn": turn.number,
        "status": turn.status,
        "reasons": list(decide.get("reasons") or canary.get("reasons") or []),
        "challenger": (turn.steps.get("register") or {}).get("challenger"),
        "champion": champion,
        "folder": str(turn.folder),
    }


def outcome_line(model: str, outcome: dict[str, Any]) -> str:
    """`promoted sha256:...` (the new champion), `refused (reasons)` with the champion that keeps
    serving, or where a turn waits (a sign-off, a canary)."""
    champion = f"{str(outcome['champion'])[:19]}..."
    head = f"{model} turn {outcome['turn']}"
    if outcome["status"] == "promoted":
        return f"{head}: promoted {champion} (new champion)"
    if outcome["status"] == "refused":
        return f"{head}: refused ({', '.join(outcome['reasons'])}); champion {champion} keeps serving"
    return f"{head}: {outcome['status']}, run `aifactory up` again to continue; champion {champion} serves"


def summary(outcomes: dict[str, dict[str, Any]], served: dict[str, str]) -> str:
    """The stage's line: each model's turn, and the serving host that answered with its champion."""
    return "; ".join(
        f"{outcome_line(model, outcome)}, answering on {served[model]}" for model, outcome in outcomes.items()
    )


# ------------------------------------------------------------------ the stage


def run_loop(context: UpContext) -> StageResult:
    if not context.plan().plan.loop:
        return StageResult("skipped", "no model has a `loop` entry in the spec (docs/loop.md)")
    if not context.options.lab:
        return StageResult(
            "skipped", "turns on a real site: `aifactory loop run` or the model's timer (docs/loop.md)"
        )
    if context.outputs.get("train", {}).get("digest") is None:
        return StageResult("skipped", "the train stage promoted no champion to retrain from")
    targets = loop_targets(context.plan().plan)
    outcomes: dict[str, dict[str, Any]] = {}
    served: dict[str, str] = {}
    for target in targets:
        turn = _one_turn(context, target)
        champion = champion_now(context, target.model)
        answers = probe_serving(context, target.model, champion)
        outcomes[target.model.name] = turn_outcome(turn, champion=champion)
        served[target.model.name] = answers.host.name
    return StageResult("ok", summary(outcomes, served), {"turns": outcomes, "served": served})


def _one_turn(context: UpContext, target: LoopTarget) -> Turn:
    """The turn's data on the node, then the turn (or the rest of the one an earlier run left)."""
    import yaml

    from aifactory.loop.site import site_turn_setup
    from aifactory.loop.turn import Places, run_turn

    folder = _folder(context)
    job = _jobs(context, target)
    write_token_file(context, Path(job["token_file"]), target.dataset.owner)
    job_path = folder / f"{target.model.name}.job.yaml"
    job_path.write_text(yaml.safe_dump(job, sort_keys=True))
    job_path.chmod(0o644)
    places = Places(context.plan().plan, lab=context.options.lab)
    setup = site_turn_setup(
        context.plan(),
        model=target.model.name,
        job_template=job_path,
        client=slurm_client(context),
        state=context.state,
        places=places,
    )
    _evaluation_set(context, target, job, setup.dataset_dir(target.holdout.name))
    generate_on_node(context, job_path, target.host, samples=LOOP_SAMPLES, extra=("--extend",))
    try:
        turn = run_turn(setup)
    except AifactoryError as error:
        raise _resumable(error, target) from error
    keep_champion_latest(setup.model_dir, turn)
    return turn


def keep_champion_latest(model_dir: Path, turn: Turn) -> None:
    """After a refused turn the champion's checkpoint is the latest one again (as the next turn would
    make it): the train stage of a later `up` resumes from the latest checkpoint and signs it as the
    champion, and must never sign the challenger the policy refused."""
    from aifactory.loop.turn import seed_from_champion

    trained = turn.steps.get("train")
    if turn.status == "refused" and trained is not None:
        seed_from_champion(model_dir, str(trained["from_champion"]), int(trained["from_step"]))


def _evaluation_set(context: UpContext, target: LoopTarget, job: dict[str, Any], folder: Path) -> None:
    """The held-out draw and its signed version 1, once: while the dataset has no version."""
    import yaml

    from aifactory.data.versions import create_version, read_history
    from aifactory.trust.authz import load_authorizer
    from aifactory.trust.issuing.models import ensure_model_key

    key = ensure_model_key(context.state.subdir("runtime"))
    history = read_history(folder, key.trust, dataset=target.holdout.name)
    if history.latest is not None:  # made (by an earlier run, or by hand): the turn checks its version
        return
    holdout_job = {**job, "name": f"up-holdout-{target.holdout.name}"[:60], "dataset": target.holdout.name}
    job_path = _folder(context) / f"{target.holdout.name}.holdout.job.yaml"
    job_path.write_text(yaml.safe_dump(holdout_job, sort_keys=True))
    job_path.chmod(0o644)
    extra = ("--offset", str(LOOP_SAMPLES))  # past every sample the turn trains on
    generate_on_node(context, job_path, target.host, samples=HOLDOUT_SAMPLES, extra=extra)
    create_version(
        plan=context.plan().plan,
        dataset=target.holdout.name,
        dataset_dir=folder,
        key=key,
        authorizer=load_authorizer(context.plan().plan),
        reason=f"held-out evaluation set of model {target.model.name}, made once by aifactory up",
    )


def _resumable(error: AifactoryError, target: LoopTarget) -> AifactoryError:
    """The turn's error, with the way to go on from `up` (the turn's own hints name `loop run`)."""
    where = f"`aifactory loop turns SITE {target.model.name}` shows where the turn stands"
    again = f"run `aifactory up` again: it continues the turn ({where})"
    return LoopError(
        f"loop turn of model {target.model.name}: {error.message}",
        code=error.code,
        exit_code=error.exit_code,
        location=error.location,
        problems=error.problems,
        hint=f"{error.hint}; {again}" if error.hint else again,
    )


def loop_inputs(context: UpContext) -> dict[str, Any]:
    """The plan, the champion the train stage promoted, the imported bundle and each turn's job and
    data sizes (its token, fresh on each run, left out)."""
    if not context.options.lab or not context.plan().plan.loop:  # the stage skips: nothing to digest
        return {"plan": context.plan_digest, "lab": context.options.lab}
    targets = loop_targets(context.plan().plan)
    jobs = {t.model.name: {k: v for k, v in _jobs(context, t).items() if k != "token_file"} for t in targets}
    return {
        "plan": context.plan_digest,
        "champion": context.outputs.get("train", {}).get("digest"),
        "bundle": context.outputs.get("import", {}).get("digest"),
        "jobs": jobs,
        "samples": {"train": LOOP_SAMPLES, "holdout": HOLDOUT_SAMPLES},
    }


def verify_loop(context: UpContext, outputs: dict[str, Any]) -> str:
    """Each turn's record still says what the stage recorded, and it ended; a promoted champion still
    verifies in the registry. A turn that waits (a sign-off, a canary) makes the stage run again,
    which continues it."""
    from aifactory.pipeline.models import model_dir
    from aifactory.trust.issuing.models import ModelKey
    from aifactory.trust.models import Registry, verify_version

    turns = outputs.get("turns")
    if not turns:
        return "unchanged: no loop turn to run"
    trust = ModelKey(context.state.subdir("runtime")).trust
    plan = context.plan().plan
    models = {m.name: m for m in plan.models}
    for name, outcome in turns.items():
        turn = Turn.load(Path(outcome["folder"]))
        if turn.status != outcome["status"] or turn.status not in ENDED:
            raise LoopError(f"turn {turn.number} of model {name} is {turn.status}", code="turn-changed")
        if turn.status == "promoted":
            registry = Registry(model_dir(plan, models[name], lab=context.options.lab))
            verify_version(registry, registry.version_dir(outcome["champion"]), trust)
    lines = "; ".join(outcome_line(name, outcome) for name, outcome in turns.items())
    return f"unchanged: {lines}"


def loop_stage() -> Stage:
    return Stage(
        "loop",
        "one loop turn: retrain on new data, evaluate, promote or refuse by policy",
        run_loop,
        loop_inputs,
        verify_loop,
    )
