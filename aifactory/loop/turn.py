"""One turn of the closed loop (docs/loop.md), step by step, each step recorded so a re-run continues.

    version   a new signed dataset version of the model's training data (its files and the feedback
              so far); the evaluation set's files may be none of its files (checked before training)
    train     the champion's checkpoint put back in place, then a retraining job from it on that
              version (through LoopJobs: Slurm); the job's end awaited
    register  what the job read checked against the version and signed (the training manifest,
              aifactory.loop.manifest); the checkpoint signed into the registry with it and named the
              `challenger`
    evaluate  the evaluation job: champion and challenger on the loop's evaluation set version
    decide    the promotion policy over the report, the training manifest (verified again) and a
              sign-off; the decision signed by the site key and kept beside the run
    canary    with a `canary` in the model's loop settings, on allow: the challenger becomes the
              registry's `canary` (its settings signed into the record) and the servers send it a
              share of the requests; the turn is `canary` until it held for `duration_minutes`
              (then on), or refused (reason `canary-regressed`) when a server withdrew it and its
              signed rollback record verifies (aifactory.loop.canary). Re-run to look again.
    promote   on allow, the challenger becomes the `champion` (a signed promotion record naming the
              decision); on a refusal the champion keeps serving. A refusal for the sign-off
              alone (none, or not a valid one) leaves the turn `awaiting-sign-off`: `aifactory
              loop sign-off`, then a re-run.

The turn record is `<state>/loop/<model>/turn-NNNNNN/turn.json` (written atomically after each step);
`run_turn` continues the newest turn unless it ended (`promoted` or `refused`), then starts the next.
Without a canary a promotion switches the champion, which the servers load on their next look at the
registry.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from aifactory.chain import canonical_bytes
from aifactory.data.holdout import DatasetVersionFiles
from aifactory.data.versions import Version, create_version, manifest_digest, read_history, sign_record
from aifactory.durable import atomic_write
from aifactory.errors import DatasetVersionError, LoopError, TurnRunning, UsageError
from aifactory.loop.canary import REGRESSED_REASON, canary_state, settings_of
from aifactory.loop.jobs import EvaluationRequest, LoopJobs, SubmittedJob
from aifactory.loop.manifest import (
    JobRef,
    check_not_trained_on,
    read_data_read,
    sign_training_manifest,
    verify_training_manifest,
)
from aifactory.loop.promotion import EvaluationReport, PromotionDecision, PromotionPolicy, decide_promotion
from aifactory.loop.signoff import read_sign_off, verified_sign_off
from aifactory.plan.model import DatasetPlan, LoopPlan, ModelPlan, SitePlan
from aifactory.runtime.job import DATA_READ, load_job
from aifactory.trust.authz import Authorizer
from aifactory.trust.issuing.models import ModelKey, promote, register
from aifactory.trust.models import CHECKPOINTS_DIR, Registry, read_promotions, verify_version

TURN_FORMAT = "aifactory.loop-turn/v1"
DECISION_FORMAT = "aifactory.promotion-decision/v1"
TURN_FILE = "turn.json"
LOCK_FILE = ".turn.lock"  # in <state>/loop/<model>: held by the run that works on a turn
SIGN_OFF_FILE = "sign-off.json"
DECISION_FILE = "promotion-decision.json"  # in the training job's run folder, beside data-read.json
REPORT_FILE = "evaluation-report.json"
ENDED = ("promoted", "refused")
WAITING = ("awaiting-sign-off", "canary")  # a run stops there; a later one looks again
# A refusal for these alone leaves the turn waiting: a (proper) sign-off may still come.
SIGN_OFF_REASONS = frozenset(
    {"sign-off-missing", "sign-off-unverified", "sign-off-not-allowed", "sign-off-mismatch"}
)
NODE_TRUST = Path("/var/lib/aifactory/runtime/model-key/model-signing.pub")  # the runtime role's


@dataclass(frozen=True)
class Places:
    """Where the site storage is: as this machine reaches it (`here`) and as the nodes that run the
    jobs see it (`on_node`). `root`: every storage below one folder, seen the same from both (tests,
    and jobs whose `storage_root` says so)."""

    plan: SitePlan
    lab: bool | None = None
    root: Path | None = None
    node_trust: Path = NODE_TRUST

    def here(self, storage: str, path: str) -> Path:
        if self.root is not None:
            return self.on_node(storage, path)
        from aifactory.pipeline.models import on_storage

        return on_storage(self.plan, storage, path, lab=self.lab)

    def on_node(self, storage: str, path: str) -> Path:
        mount = next((s.mount_path for s in self.plan.storage if s.name == storage), None)
        if mount is None:
            raise UsageError(f"storage {storage} of site {self.plan.name} is not mounted on the nodes")
        planned = Path(mount.rstrip("/") + "/" + path.lstrip("/"))
        return self.root / planned.relative_to("/") if self.root is not None else planned


@dataclass
class TurnSetup:
    """Everything a turn works with; built by the CLI (real Slurm) or a test (a stand-in)."""

    plan: SitePlan
    model: str
    job_template: Path  # an aifactory.job/v1 file: token, hosts, network, train settings
    key: ModelKey
    authorizer: Authorizer
    jobs: LoopJobs
    places: Places
    state_dir: Path  # <state>/loop
    allowed_signers: Path  # the sign-off trust file
    # allowed_signers of the serving nodes' decision-log keys (as collected from them): a canary's
    # rollback record must verify against one of them (aifactory.loop.canary)
    node_signers: tuple[Path, ...] = ()
    policy: PromotionPolicy | None = None
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    @property
    def loop(self) -> LoopPlan:
        found = next((entry for entry in self.plan.loop or () if entry.model == self.model), None)
        if found is None:
            raise UsageError(f"site {self.plan.name} has no loop for model {self.model[:80]!r}")
        return found

    @property
    def model_plan(self) -> ModelPlan:
        return next(m for m in self.plan.models if m.name == self.model)

    def dataset(self, name: str) -> DatasetPlan:
        return next(d for d in self.plan.datasets if d.name == name)

    def dataset_dir(self, name: str) -> Path:
        dataset = self.dataset(name)
        return self.places.here(dataset.storage, dataset.path)

    @property
    def model_dir(self) -> Path:
        return self.places.here(self.model_plan.storage, self.model_plan.path)


@dataclass
class Turn:
    """A turn's record: its number, status and what each step did."""

    folder: Path
    number: int
    model: str
    status: str = "running"
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)  # the steps finished, in order

    @property
    def file(self) -> Path:
        return self.folder / TURN_FILE

    def save(self, now: datetime) -> None:
        document = {
            "format": TURN_FORMAT,
            "model": self.model,
            "turn": self.number,
            "status": self.status,
            "steps": self.steps,
            "done": self.done,
            "updated": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        atomic_write(self.file, json.dumps(document, indent=1, sort_keys=True).encode() + b"\n", mode=0o644)

    def as_dict(self) -> dict[str, Any]:
        return {
            "turn": self.number,
            "model": self.model,
            "status": self.status,
            "done": self.done,
            "steps": self.steps,
        }

    def line(self) -> str:
        """One line of where the turn stands (`aifactory loop run` and `loop turns`, `up`'s loop stage)."""
        steps = self.steps
        head = f"{self.model} turn {self.number}: {self.status}"
        if "version" in steps:
            head += f"; data {steps['version']['dataset']}@v{steps['version']['version']}"
        if "train" in steps:
            head += f"; Slurm job {steps['train']['slurm_job_id']}"
        if "register" in steps:
            head += f"; challenger {steps['register']['challenger'][:19]}..."
        if "decide" in steps:
            reasons = steps["decide"]["reasons"]
            head += f"; policy: {'promote' if not reasons else ', '.join(reasons)}"
        if "canary" in steps:
            canary = steps["canary"]
            state = ", ".join(canary.get("reasons", [])) or canary["state"]
            head += f"; canary since {canary['since']}: {state}"
        return head

    @classmethod
    def load(cls, folder: Path) -> Turn:
        try:
            document = json.loads((folder / TURN_FILE).read_text())
            return cls(
                folder,
                int(document["turn"]),
                str(document["model"]),
                str(document["status"]),
                dict(document["steps"]),
                [str(step) for step in document["done"]],
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LoopError(
                f"{folder / TURN_FILE} is not a turn record: {exc}", code="turn-invalid"
            ) from None


def turns_dir(state_dir: Path, model: str) -> Path:
    return state_dir / model


def turns(state_dir: Path, model: str) -> list[Turn]:
    folder = turns_dir(state_dir, model)
    return [Turn.load(p) for p in sorted(folder.glob("turn-*")) if (p / TURN_FILE).is_file()]


def current_turn(setup: TurnSetup) -> Turn:
    """The newest turn when it has not ended, else a new one."""
    found = turns(setup.state_dir, setup.model)
    if found and found[-1].status not in ENDED:
        return found[-1]
    number = found[-1].number + 1 if found else 1
    folder = turns_dir(setup.state_dir, setup.model) / f"turn-{number:06d}"
    folder.mkdir(parents=True, exist_ok=False)
    _readable_by_nodes(folder, setup.state_dir)
    turn = Turn(folder, number, setup.model)
    turn.save(setup.now())
    return turn


def _readable_by_nodes(folder: Path, top: Path) -> None:
    """The job file lives here and the job's nodes read it (the lab's hosts, as `up`'s train stage)."""
    for path in [folder, *folder.parents]:
        path.chmod(0o755)
        if path == top:
            break


@contextmanager
def turn_lock(state_dir: Path, model: str) -> Iterator[None]:
    """Hold the model's turn lock (flock on `<state>/loop/<model>/.turn.lock`) or raise TurnRunning at
    once: two runs of one turn would submit its jobs twice. The kernel drops it with the process."""
    folder = turns_dir(state_dir, model)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TurnRunning(
                f"a turn of model {model} is running (another `aifactory loop run` holds its lock)",
                hint="wait for it to end; `aifactory loop turns SITE MODEL` shows where it stands",
            ) from None
        yield
    finally:
        os.close(fd)  # closing releases the flock


def run_turn(setup: TurnSetup) -> Turn:
    """Run (or continue) one turn to its end or to `awaiting-sign-off`; the turn record. Under the
    model's turn lock: a second run while one works refuses (TurnRunning) before touching anything."""
    with turn_lock(setup.state_dir, setup.model):
        return _run_turn(setup)


def _run_turn(setup: TurnSetup) -> Turn:
    turn = current_turn(setup)
    for name, step in STEPS:
        if name in turn.done and not _runs_again(name, turn):
            continue
        if name == "canary" and setup.loop.canary is None:  # a loop without one: the record as before
            continue
        step(setup, turn)
        if name not in turn.done:
            turn.done.append(name)
        turn.save(setup.now())
        if turn.status in ENDED or turn.status in WAITING:
            break
    return turn


def _runs_again(name: str, turn: Turn) -> bool:
    """A RERUN step runs on every run until the turn ends; but once the challenger serves as the
    canary, the decision its canary record names stands (lineage finds that decision)."""
    return name in RERUN and not (name == "decide" and "canary" in turn.steps)


# --- the steps ------------------------------------------------------------------------------------


def training_dataset(model: ModelPlan) -> str:
    """The dataset a turn versions and retrains on: the model's first `trained_on`."""
    if not model.trained_on:
        raise UsageError(f"model {model.name} is trained on no dataset: nothing to retrain on")
    return model.trained_on[0]


def _training_dataset(setup: TurnSetup) -> str:
    return training_dataset(setup.model_plan)


def _evaluation_version(setup: TurnSetup) -> Version:
    evaluation = setup.loop.evaluation
    history = read_history(setup.dataset_dir(evaluation.dataset), setup.key.trust, dataset=evaluation.dataset)
    if not history.ok:
        raise LoopError(
            f"the versions of the evaluation set {evaluation.dataset} do not verify: {history.problems[0]}",
            code="evaluation-set-invalid",
        )
    try:
        return history.find(str(evaluation.version))
    except DatasetVersionError as exc:
        raise LoopError(
            exc.message, code="evaluation-set-missing", hint="make it with `aifactory data version`"
        ) from None


def step_version(setup: TurnSetup, turn: Turn) -> None:
    dataset = _training_dataset(setup)
    made = create_version(
        plan=setup.plan,
        dataset=dataset,
        dataset_dir=setup.dataset_dir(dataset),
        key=setup.key,
        authorizer=setup.authorizer,
        reason=f"loop turn {turn.number} of model {setup.model}",
        now=setup.now(),
    )
    evaluation = _evaluation_version(setup)
    turn.steps["version"] = {
        "dataset": dataset,
        "version": made.version.number,
        "digest": made.version.digest,
        "feedback_added": made.added,
        "policy_decisions": list(made.policy_decisions),
        "evaluation_set": {
            "dataset": evaluation.manifest["dataset"],
            "version": evaluation.number,
            "digest": evaluation.digest,
        },
    }
    turn.save(setup.now())
    check_not_trained_on(DatasetVersionFiles.of(made.version), DatasetVersionFiles.of(evaluation))


def _champion(setup: TurnSetup) -> tuple[str, int]:
    registry = Registry(setup.model_dir)
    champion = read_promotions(registry, setup.key.trust).alias("champion")
    if champion is None:
        raise LoopError(
            f"model {setup.model} has no champion to retrain from",
            code="no-champion",
            hint="the first champion is promoted by hand or by `aifactory up`'s train stage",
        )
    version = verify_version(registry, registry.version_dir(champion.digest), setup.key.trust)
    return champion.digest, int(version.provenance["step"])


def seed_from_champion(model_dir: Path, champion: str, step: int) -> None:
    """Put the champion's checkpoint back as the latest one, so the job resumes from it (not from a
    refused challenger's): restored from the registry when training since removed it, and every
    newer checkpoint folder removed (a registered one lives on in the registry)."""
    checkpoints = model_dir / CHECKPOINTS_DIR
    name = f"step-{step:08d}"
    for folder in checkpoints.glob("step-*"):
        if folder.is_dir() and folder.name > name:
            shutil.rmtree(folder)
    if not (checkpoints / name / "checkpoint.json").is_file():
        files = Registry(model_dir).files(champion)
        staging = checkpoints / f".{name}.restoring"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for item in ("model.safetensors", "optimizer.safetensors", "checkpoint.json"):
            shutil.copyfile(files / item, staging / item)
        shutil.rmtree(checkpoints / name, ignore_errors=True)
        staging.rename(checkpoints / name)
    atomic_write(checkpoints / "latest", name.encode())


def step_train(setup: TurnSetup, turn: Turn) -> None:
    if "train" not in turn.steps:  # else submitted by an earlier run: wait for that job
        _submit_training(setup, turn)
    if turn.steps["train"].get("state") != "COMPLETED":
        _await(setup, turn, "train")


def _submit_training(setup: TurnSetup, turn: Turn) -> None:
    champion, step = _champion(setup)
    template = load_job(setup.job_template)
    steps = step + template.train.steps
    job = {
        **yaml.safe_load(setup.job_template.read_text()),
        "name": f"loop-{setup.model}-t{turn.number}"[:63],
        "dataset": turn.steps["version"]["dataset"],
        "model": setup.model,
        "train": {**template.train.model_dump(), "steps": steps},
    }
    for key in ("plan", "token_file", "storage_root", "runtime_dir"):  # absolute: the job moves here
        if (value := getattr(template, key)) is not None:
            job[key] = str(value)
    job_path = turn.folder / "job.yaml"
    job_path.write_text(yaml.safe_dump(job, sort_keys=True))
    job_path.chmod(0o644)
    seed_from_champion(setup.model_dir, champion, step)
    submitted = setup.jobs.submit_training(job_path)
    turn.steps["train"] = {
        "job": submitted.name,
        "slurm_job_id": submitted.slurm_job_id,
        "decision_id": submitted.decision_id,
        "from_champion": champion,
        "from_step": step,
        "steps": steps,
        "state": "submitted",
    }
    turn.save(setup.now())


def _await(setup: TurnSetup, turn: Turn, name: str) -> None:
    record = turn.steps[name]
    state = setup.jobs.wait(SubmittedJob(record["job"], record["slurm_job_id"], record["decision_id"]))
    record["state"] = state
    if state != "COMPLETED":
        failed = turn.steps.pop(name)  # a re-run submits again (training resumes from its checkpoint)
        turn.steps.setdefault("failed", {})[name] = failed
        turn.save(setup.now())
        raise LoopError(
            f"the {name} job {record['slurm_job_id']} ({record['job']}) ended {state}",
            code=f"{name}-failed",
            hint="see its output in the model's runs/ folder; `aifactory loop run` again submits it again",
        )


def step_register(setup: TurnSetup, turn: Turn) -> None:
    train, made = turn.steps["train"], turn.steps["version"]
    history = read_history(setup.dataset_dir(made["dataset"]), setup.key.trust, dataset=made["dataset"])
    if not history.ok:  # a manifest is signed only over data whose every version verifies
        raise LoopError(
            f"the versions of dataset {made['dataset']} do not verify: {history.problems[0]}",
            code="training-data-unverified",
        )
    version = history.find(made["digest"])
    run_dir = setup.model_dir / "runs" / train["job"]
    manifest = sign_training_manifest(
        model=setup.model,
        job=JobRef(train["job"], train["slurm_job_id"], train["decision_id"]),
        data_read=read_data_read(run_dir / DATA_READ),
        version=version,
        key=setup.key,
    )
    dataset = setup.dataset(made["dataset"])
    registered = register(
        model_dir=setup.model_dir,
        checkpoint=setup.model_dir / CHECKPOINTS_DIR / f"step-{int(train['steps']):08d}",
        key=setup.key,
        job={k: train[k] for k in ("slurm_job_id", "decision_id")}
        | {"name": train["job"], "loop_turn": turn.number},
        dataset={
            "name": dataset.name,
            "owner": dataset.owner,
            "path": dataset.path,
            "version": made["version"],
            "digest": made["digest"],
        },
        training_manifest=manifest,
    )
    promote(
        model_dir=setup.model_dir,
        digest=registered.digest,
        alias="challenger",
        key=setup.key,
        reason=f"loop turn {turn.number}: trained by Slurm job {train['slurm_job_id']}",
        now=setup.now(),
    )
    turn.steps["register"] = {
        "challenger": registered.digest,
        "step": int(train["steps"]),
        "training_manifest": manifest_digest(manifest),
        "champion": train["from_champion"],
    }


def step_evaluate(setup: TurnSetup, turn: Turn) -> None:
    record = turn.steps.get("evaluate")
    if record is None:
        loop, registered = setup.loop, turn.steps["register"]
        evaluation = setup.dataset(loop.evaluation.dataset)
        model = setup.model_plan
        name = f"loop-{setup.model}-t{turn.number}-eval"[:63]
        out = setup.places.on_node(model.storage, model.path) / "runs" / name / REPORT_FILE
        request = EvaluationRequest(
            job_template=turn.folder / "job.yaml",
            name=name,
            model=setup.model,
            model_dir=setup.places.on_node(model.storage, model.path),
            champion=registered["champion"],
            challenger=registered["challenger"],
            dataset=evaluation.name,
            dataset_dir=setup.places.on_node(evaluation.storage, evaluation.path),
            version=loop.evaluation.version,
            trust=setup.places.node_trust,
            out=out,
        )
        submitted = setup.jobs.submit_evaluation(request)
        record = {
            "job": submitted.name,
            "slurm_job_id": submitted.slurm_job_id,
            "decision_id": submitted.decision_id,
            "state": "submitted",
        }
        turn.steps["evaluate"] = record
        turn.save(setup.now())
    if record.get("state") != "COMPLETED":
        _await(setup, turn, "evaluate")
    report_path = setup.model_dir / "runs" / record["job"] / REPORT_FILE
    report = EvaluationReport.load(report_path)
    shutil.copyfile(report_path, turn.folder / REPORT_FILE)
    record["report"] = report.model_dump(mode="json")


def step_decide(setup: TurnSetup, turn: Turn) -> None:
    """Judge (again, each run while awaiting a sign-off): the policy over the report, the training
    manifest as the challenger's signed provenance carries it, the evaluation set and a sign-off."""
    turn.status = "running"
    registered = turn.steps["register"]
    registry = Registry(setup.model_dir)
    challenger = verify_version(registry, registry.version_dir(registered["challenger"]), setup.key.trust)
    training = verify_training_manifest(
        challenger.provenance.get("training_manifest") or {},
        trust=setup.key.trust,
        dataset_dirs={d.name: setup.dataset_dir(d.name) for d in setup.plan.datasets if d.host_path},
    )
    evaluation = DatasetVersionFiles.of(_evaluation_version(setup))
    stored = read_sign_off(turn.folder / SIGN_OFF_FILE)
    sign_off = (
        verified_sign_off(
            stored, site=setup.plan.name, model=setup.model, allowed_signers=setup.allowed_signers
        )
        if stored is not None
        else None
    )
    report = EvaluationReport.parse(turn.steps["evaluate"]["report"], file=str(turn.folder / REPORT_FILE))
    decision = decide_promotion(
        loop=setup.loop,
        report=report,
        training=training,
        evaluation=evaluation,
        sign_off=sign_off,
        policy=setup.policy,
    )
    signed = _signed_decision(
        setup, turn, decision, report, training.identities(), sign_off.as_input() if sign_off else None
    )
    atomic_write(
        setup.model_dir / "runs" / turn.steps["train"]["job"] / DECISION_FILE, canonical_bytes(signed) + b"\n"
    )
    turn.steps["decide"] = {"digest": manifest_digest(signed), **decision.as_dict()}
    if decision.promote:
        return
    turn.status = "awaiting-sign-off" if set(decision.reasons) <= SIGN_OFF_REASONS else "refused"


def _signed_decision(
    setup: TurnSetup,
    turn: Turn,
    decision: PromotionDecision,
    report: EvaluationReport,
    training: list[dict[str, Any]],
    sign_off: dict[str, Any] | None,
) -> dict[str, Any]:
    """The promotion decision as lineage reads it: what was judged and the answer, signed by the site."""
    return sign_record(
        {
            "format": DECISION_FORMAT,
            "site": setup.plan.name,
            "model": setup.model,
            "turn": turn.number,
            "challenger": turn.steps["register"]["challenger"],
            "champion": turn.steps["register"]["champion"],
            "evaluation_set": report.evaluation_set.model_dump(mode="json"),
            "training": training,
            "sign_off": sign_off,
            "time": setup.now().isoformat(timespec="seconds").replace("+00:00", "Z"),
            **{k: v for k, v in decision.as_dict().items() if k != "detail"},
        },
        setup.key,
    )


def step_canary(setup: TurnSetup, turn: Turn) -> None:
    """Serve the challenger as the canary first, when the loop has one (module docstring)."""
    plan = setup.loop.canary
    if plan is None:  # run_turn skips the step then
        return
    challenger = turn.steps["register"]["challenger"]
    current = read_promotions(Registry(setup.model_dir), setup.key.trust).alias("canary")
    if current is None or current.digest != challenger:  # a re-run makes it the canary once
        promote(
            model_dir=setup.model_dir,
            digest=challenger,
            alias="canary",
            key=setup.key,
            reason=f"loop turn {turn.number}: canary (decision {turn.steps['decide']['digest']})",
            now=setup.now(),
            canary=settings_of(plan),
        )
    found = canary_state(
        model_dir=setup.model_dir,
        digest=challenger,
        trust=setup.key.trust,
        signers=list(setup.node_signers),
        hold=timedelta(minutes=plan.duration_minutes),
        now=setup.now(),
    )
    turn.steps["canary"] = {"digest": challenger, **found.as_dict()}
    if found.state == "regressed":
        turn.steps["canary"]["reasons"] = [REGRESSED_REASON]
        turn.status = "refused"
    elif found.state == "running":
        turn.status = "canary"
    else:
        turn.status = "running"


def step_promote(setup: TurnSetup, turn: Turn) -> None:
    decision, registered = turn.steps["decide"], turn.steps["register"]
    current = read_promotions(Registry(setup.model_dir), setup.key.trust).alias("champion")
    if current is None or current.digest != registered["challenger"]:  # a re-run promotes once
        promote(
            model_dir=setup.model_dir,
            digest=registered["challenger"],
            alias="champion",
            key=setup.key,
            reason=f"loop turn {turn.number}: promoted by policy (decision {decision['digest']})",
            now=setup.now(),
        )
    turn.steps["promote"] = {"champion": registered["challenger"], "previous": registered["champion"]}
    turn.status = "promoted"


STEPS: tuple[tuple[str, Callable[[TurnSetup, Turn], None]], ...] = (
    ("version", step_version),
    ("train", step_train),
    ("register", step_register),
    ("evaluate", step_evaluate),
    ("decide", step_decide),
    ("canary", step_canary),
    ("promote", step_promote),
)
# Judged again on every run until the turn ends (a sign-off may come; the canary runs on).
RERUN = frozenset({"decide", "canary"})
