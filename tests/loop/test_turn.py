"""Loop turns with real training on this machine: data versions, retraining from the champion's
checkpoint (torchrun, Gloo, CPU), the signed training manifest, the evaluation job, the real promotion
policy, promotion, sign-off, and the lineage of a decision with each link tampered with in turn.

Where a fake stands in: Slurm (tests/loop/local_jobs.py runs the same programs here instead of
through sbatch/srun). Everything else is the real part. The data: a teacher network's samples
(aifactory.runtime.dataset), the evaluation set a held-out slice of the same draw.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("torch")

from aifactory.cli.main import main  # noqa: E402
from aifactory.data.feedback import write_receipt  # noqa: E402
from aifactory.data.versions import DatasetStore, create_version  # noqa: E402
from aifactory.errors import LoopError  # noqa: E402
from aifactory.loop.lineage import lineage  # noqa: E402
from aifactory.loop.signoff import make_sign_off, write_sign_off  # noqa: E402
from aifactory.loop.turn import DECISION_FILE, SIGN_OFF_FILE, Places, TurnSetup, run_turn, turns  # noqa: E402
from aifactory.plan import plan_site  # noqa: E402
from aifactory.plan.model import SitePlan  # noqa: E402
from aifactory.policy import RuntimeAuthorizer  # noqa: E402
from aifactory.runtime import dataset as datasets  # noqa: E402
from aifactory.signing import generate_keypair  # noqa: E402
from aifactory.trust.authz import Outcome  # noqa: E402
from aifactory.trust.decisionlog import DecisionLog  # noqa: E402
from aifactory.trust.issuing.models import ModelKey, ensure_model_key, promote, register  # noqa: E402
from aifactory.trust.issuing.tokens import issue_token  # noqa: E402
from aifactory.trust.models import Registry, read_promotions  # noqa: E402
from aifactory.trust.tokens import TrustFiles  # noqa: E402

from .conftest import FIXTURES  # noqa: E402
from .local_jobs import LocalJobs  # noqa: E402

pytestmark = pytest.mark.slow
MODEL = "vitals-mlp"
X, Y = datasets.teacher_samples(samples=5120, features=16, classes=4, seed=7)
HOLDOUT = slice(4096, 4608)  # never in any training version below
CHAMPION_STEPS = 20


@dataclass
class LoopSite:
    """A copy of the site: storage, runtime folder (keys, tokens, decision log), plan, loop state."""

    root: Path
    plan: SitePlan
    jobs: LocalJobs = field(default_factory=LocalJobs)

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def runtime(self) -> Path:
        return self.root / "runtime"

    @property
    def key(self) -> ModelKey:
        return ModelKey(self.runtime)

    def dataset_dir(self, name: str) -> Path:
        return self.storage / "srv/share/datasets" / name

    @property
    def model_dir(self) -> Path:
        return self.storage / "srv/share/models" / MODEL

    def write_training(self, x: np.ndarray, y: np.ndarray) -> None:
        datasets.write(self.dataset_dir("vitals"), name="vitals", x=x, y=y, classes=4, seed=7)

    def job(self, *, name: str = "loop", steps: int = 60) -> Path:
        from tests.runtime.conftest import free_port

        (self.root / "plan.json").write_text(self.plan.to_json())
        job = {
            "schema": "aifactory.job/v1",
            "name": name,
            "plan": str(self.root / "plan.json"),
            "token_file": str(self.root / "token"),
            "dataset": "vitals",
            "model": MODEL,
            "storage_root": str(self.storage),
            "runtime_dir": str(self.runtime),
            "rendezvous_port": free_port(),
            "processes_per_host": 1,
            "network": {"hidden": 32, "layers": 2},
            "train": {"steps": steps, "global_batch": 32, "learning_rate": 0.01, "checkpoint_every": 20},
            "timeouts": {"rendezvous_s": 120, "collective_s": 120},
        }
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(job))
        return path

    def setup(self, plan: SitePlan | None = None, signers: Path | None = None, steps: int = 60) -> TurnSetup:
        # These turns are about the promotion; the canary before it has its own tests
        # (test_canary_turn.py, tests/runtime/test_canary.py), so the fixture site's canary is left out.
        plan = without_canary(plan or self.plan)
        return TurnSetup(
            plan=plan,
            model=MODEL,
            job_template=self.job(steps=steps),
            key=self.key,
            authorizer=RuntimeAuthorizer(plan),
            jobs=self.jobs,
            places=Places(plan, root=self.storage, node_trust=self.key.trust.public_key),
            state_dir=self.root / "loop",
            allowed_signers=signers or self.root / "allowed_signers",
        )

    def champion(self) -> str:
        found = read_promotions(Registry(self.model_dir), self.key.trust).alias("champion")
        assert found is not None
        return found.digest


def without_canary(plan: SitePlan) -> SitePlan:
    return replace(plan, loop=tuple(replace(entry, canary=None) for entry in plan.loop or ()))


@pytest.fixture(scope="module")
def champion_site(plan: SitePlan, tmp_path_factory: pytest.TempPathFactory) -> LoopSite:
    """A site whose model has a champion: trained briefly on 128 samples, signed and promoted the
    way `aifactory up`'s train stage does; the evaluation set made as its version 1."""
    site = LoopSite(tmp_path_factory.mktemp("loopsite"), plan)
    ensure_model_key(site.runtime)
    expires = datetime.now(UTC) + timedelta(days=1)
    token = issue_token(TrustFiles(site.runtime), site=plan.name, tenant="health", expires=expires).token
    (site.root / "token").write_text(token)
    datasets.write(
        site.dataset_dir("vitals-holdout"),
        name="vitals-holdout",
        x=X[HOLDOUT],
        y=Y[HOLDOUT],
        classes=4,
        seed=7,
    )
    create_version(
        plan=plan,
        dataset="vitals-holdout",
        dataset_dir=site.dataset_dir("vitals-holdout"),
        key=site.key,
        authorizer=RuntimeAuthorizer(plan),
    )
    site.write_training(X[:128], Y[:128])
    submitted = site.jobs.submit_training(site.job(name="champion", steps=CHAMPION_STEPS))
    assert site.jobs.wait(submitted) == "COMPLETED", site.jobs.outputs[submitted.slurm_job_id]
    version = register(
        model_dir=site.model_dir,
        checkpoint=site.model_dir / "checkpoints" / f"step-{CHAMPION_STEPS:08d}",
        key=site.key,
        job={"name": "champion"},
        dataset={"name": "vitals"},
    )
    promote(model_dir=site.model_dir, digest=version.digest, alias="champion", key=site.key, reason="first")
    return site


@pytest.fixture
def site(champion_site: LoopSite, tmp_path: Path) -> Iterator[LoopSite]:
    """The champion's site, copied for one test."""
    root = tmp_path / "site"
    shutil.copytree(champion_site.root, root, symlinks=True)
    yield LoopSite(root, champion_site.plan)


def _accuracy(turn_steps: dict[str, dict[str, object]], who: str) -> float:
    report = turn_steps["evaluate"]["report"]
    assert isinstance(report, dict)
    return float(report[who]["metrics"]["accuracy"])


def _decide(site: LoopSite, digest: str, decision_id: str) -> Path:
    """A decision of the server on `digest`, as the server leaves it: a receipt on the storage and an
    allowed `infer` record naming the version in the node's decision log."""
    write_receipt(
        site.model_dir, decision_id=decision_id, tenant="health", model=MODEL, digest=digest, host="n1"
    )
    log_path = site.root / "node" / "decisions.jsonl"
    log = DecisionLog(log_path)
    try:
        outcome = Outcome(
            True, (), decision_id, "infer", f"model/{MODEL}", "health", request={"model_digest": digest}
        )
        log.record(outcome.record(component="serve", host="looplab-cpu-001"))
    finally:
        log.close()
    return log_path


def test_two_turns_each_promote_a_better_model_and_the_lineage_of_a_decision_verifies(
    site: LoopSite, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first_champion = site.champion()
    site.write_training(X[:256], Y[:256])
    one = run_turn(site.setup(steps=40))
    assert one.status == "promoted", one.steps.get("decide")
    assert one.done == ["version", "train", "register", "evaluate", "decide", "promote"]
    assert _accuracy(one.steps, "challenger") > _accuracy(one.steps, "champion")
    assert one.steps["train"]["from_champion"] == first_champion
    assert site.champion() == one.steps["register"]["challenger"] != first_champion

    site.write_training(X[:4096], Y[:4096])  # 16 times the data, trained longer on it
    two = run_turn(site.setup(steps=200))
    assert (two.number, two.status) == (2, "promoted"), (two.steps.get("decide"), one.steps["decide"])
    assert _accuracy(two.steps, "challenger") > _accuracy(two.steps, "champion")
    assert two.steps["train"]["from_champion"] == one.steps["register"]["challenger"]
    assert site.champion() == two.steps["register"]["challenger"]
    assert two.steps["version"]["version"] == 2  # each turn made its own data version

    decision_id = "ab" * 16
    log = _decide(site, site.champion(), decision_id)
    dirs = {
        "model_dirs": {MODEL: site.model_dir},
        "dataset_dirs": {d: site.dataset_dir(d) for d in ("vitals", "vitals-holdout")},
    }
    found = lineage(decision_id, trust=site.key.trust, decision_logs=[log], **dirs)  # type: ignore[arg-type]
    assert found.verified, [(link.kind, link.detail) for link in found.broken]
    kinds = [(link.kind, link.name) for link in found.links]
    assert kinds[:2] == [("decision", decision_id), ("model-version", two.steps["register"]["challenger"])]
    assert ("dataset-version", "vitals v2") in kinds and ("dataset-version", "vitals-holdout v1") in kinds
    assert [k for k, _ in kinds] == [
        "decision",
        "model-version",
        "promotion",
        "promotion-decision",
        "training-manifest",
        "dataset-version",
        "dataset-version",
    ]

    # Each link tampered with in turn is reported broken, by name; the others stay verified.
    run_dir = site.model_dir / "runs" / two.steps["train"]["job"]
    version_two = json.loads((site.dataset_dir("vitals") / "versions/v000002.json").read_text())
    shard = next(f for f in version_two["files"] if f["path"].startswith("shard-"))
    promotions = Registry(site.model_dir).promotions
    tampered = {  # the file changed -> the links reported broken (the first is the one changed)
        log: ["decision"],
        Registry(site.model_dir).files(site.champion()) / "aifactory-provenance.json": ["model-version"],
        # A changed promotion record: it and every record after it are refused, so the champion's
        # promotion and the decision it names are not found.
        promotions: ["promotion", "promotion-decision"],
        run_dir / DECISION_FILE: ["promotion-decision"],
        DatasetStore(site.dataset_dir("vitals")).object(shard["sha256"]): ["dataset-version"],
    }
    for path, kinds in tampered.items():
        original = path.read_bytes()
        path.chmod(0o644)
        changed = (
            original.replace(b"health", b"heAlth", 1) if b"health" in original else original[:-2] + b"x\n"
        )
        path.write_bytes(changed.replace(b"loop turn 2", b"loop turn 9") if path == promotions else changed)
        broken = lineage(decision_id, trust=site.key.trust, decision_logs=[log], **dirs)  # type: ignore[arg-type]
        assert not broken.verified
        assert [link.kind for link in broken.broken] == kinds, (
            path,
            [(b.kind, b.detail) for b in broken.broken],
        )
        path.write_bytes(original)
    assert lineage(decision_id, trust=site.key.trust, decision_logs=[log], **dirs).verified  # type: ignore[arg-type]
    _lineage_through_the_cli(site, decision_id, log, run_dir / DECISION_FILE, capsys, monkeypatch)


def _lineage_through_the_cli(
    site: LoopSite,
    decision_id: str,
    log: Path,
    decision_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`aifactory lineage` over the same site: the chain in JSON, exit 0; with a link broken, exit 1
    and one error line naming the link."""
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(site.root / "state"))
    (site.root / "state" / site.plan.name).mkdir(parents=True)
    (site.root / "state" / site.plan.name / "runtime").symlink_to(site.runtime)
    argv = ["lineage", str(FIXTURES / "site.yaml"), decision_id, "--decision-log", str(log)]
    argv += ["--storage-root", str(site.storage)]
    assert main([*argv, "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["verified"] is True and len(shown["links"]) == 7
    decision_file.write_bytes(decision_file.read_bytes()[:-3] + b"\n")
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "BROKEN  promotion-decision" in out
    assert err.startswith("error[lineage-broken]") and "promotion-decision" in err, err


def test_a_candidate_trained_on_shuffled_labels_is_refused_after_a_failed_evaluation_is_run_again(
    site: LoopSite,
) -> None:
    champion = site.champion()
    shuffled = np.random.Generator(np.random.PCG64(3)).permutation(Y[:1024])
    site.write_training(X[:1024], shuffled)
    site.jobs.fail_next.add("evaluation")
    with pytest.raises(LoopError) as failed:  # the evaluation job failed: the turn stops there
        run_turn(site.setup())
    assert failed.value.code == "evaluate-failed"
    turn = run_turn(site.setup())  # and continues there: evaluated again, not trained again
    assert len(site.jobs.submitted) == 3 and site.jobs.submitted[0] != site.jobs.submitted[1]
    assert site.jobs.submitted[1] == site.jobs.submitted[2] == turn.steps["evaluate"]["job"]
    assert turn.status == "refused"
    assert "no-improvement" in turn.steps["decide"]["reasons"], turn.steps["decide"]
    assert "promote" not in turn.steps and "promote" not in turn.done
    assert site.champion() == champion
    # The turn ended: the next run starts turn 2 (nothing of turn 1 is redone).
    assert [t.status for t in turns(site.root / "loop", MODEL)] == ["refused"]


def test_with_sign_off_required_nothing_is_promoted_until_a_signed_sign_off(
    site: LoopSite, tmp_path: Path
) -> None:
    spec = (
        (FIXTURES / "site.yaml")
        .read_text()
        .replace("    canary:", "    sign_off: {by: [dr.ade@health.example]}\n    canary:")
    )
    (tmp_path / "site.yaml").write_text(spec)
    plan = plan_site(tmp_path / "site.yaml", write_lock=False).plan
    ade = generate_keypair(
        tmp_path / "ade", identity="dr.ade@health.example", namespaces="aifactory-sign-off"
    )
    mallory = generate_keypair(tmp_path / "mallory", identity="mallory@health.example")
    stranger = generate_keypair(tmp_path / "stranger", identity="stranger@elsewhere.example")
    signers = tmp_path / "allowed_signers"
    signers.write_text(ade.allowed_signers.read_text() + mallory.allowed_signers.read_text())
    champion = site.champion()
    site.write_training(X[:1024], Y[:1024])

    turn = run_turn(site.setup(plan, signers))
    assert turn.status == "awaiting-sign-off" and turn.steps["decide"]["reasons"] == ["sign-off-missing"]
    assert site.champion() == champion
    challenger = turn.steps["register"]["challenger"]

    with pytest.raises(LoopError) as refused:  # a key the trust file does not name signs nothing
        make_sign_off(
            site=plan.name, model=MODEL, challenger=challenger, key=stranger.private, allowed_signers=signers
        )
    assert refused.value.code == "sign-off-not-allowed"

    # Someone the trust file knows but the spec does not name: still waiting, with the reason.
    signed = make_sign_off(
        site=plan.name, model=MODEL, challenger=challenger, key=mallory.private, allowed_signers=signers
    )
    write_sign_off(turn.folder / SIGN_OFF_FILE, signed)
    again = run_turn(site.setup(plan, signers))
    assert (again.number, again.status) == (1, "awaiting-sign-off")
    assert again.steps["decide"]["reasons"] == ["sign-off-not-allowed"]
    assert site.champion() == champion

    signed = make_sign_off(
        site=plan.name, model=MODEL, challenger=challenger, key=ade.private, allowed_signers=signers
    )
    write_sign_off(turn.folder / SIGN_OFF_FILE, signed)
    done = run_turn(site.setup(plan, signers))
    assert (done.number, done.status) == (1, "promoted")
    assert site.champion() == challenger
    assert len(site.jobs.submitted) == 2  # one training, one evaluation: the re-runs trained nothing


def test_an_evaluation_file_in_the_training_data_is_refused_before_training(site: LoopSite) -> None:
    site.write_training(X[:1024], Y[:1024])
    holdout = json.loads((site.dataset_dir("vitals-holdout") / "versions/v000001.json").read_text())
    shard = next(f for f in holdout["files"] if f["path"].startswith("shard-"))
    copied = site.dataset_dir("vitals") / "extra" / "holdout-shard.safetensors"
    copied.parent.mkdir()
    shutil.copyfile(DatasetStore(site.dataset_dir("vitals-holdout")).object(shard["sha256"]), copied)
    with pytest.raises(LoopError) as refused:
        run_turn(site.setup())
    assert refused.value.code == "eval-set-in-training"
    assert site.jobs.submitted == []  # nothing was trained
