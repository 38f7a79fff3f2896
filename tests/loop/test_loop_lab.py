"""Two turns of the closed loop on the session's deployed lab, through real Slurm, real training on the
lab's cpu node, the evaluation job under srun, the promotion policy, the registry's promotion and the
lab's inference servers; then the lineage of a decision the server made on turn two's model, with the
node's own decision log.

Real parts throughout: `deployed_lab` (namespaces, sshd, the session bundle deployed: runtime,
inference servers, munge and Slurm), `aifactory loop run` and `aifactory lineage` as the CLI runs them
(subprocesses of this machine, reaching Slurm on the lab's control host), the bundle's own
`aifactory-train` and `aifactory.runtime.evaluate` on the node. The spec is the session lab's, which
carries a held-out dataset of the model's owner and the model's `loop` entry (inventory/lab/site.yaml,
for `aifactory up`'s loop stage); where a lab spec lacks either, the fixture adds the same ones below.

The data is written here onto the lab's shared storage, as an owner's pipeline would put it there: a
teacher network's samples (aifactory.runtime.dataset), the evaluation set a held-out slice of the same
draw. The first champion is trained through Slurm and promoted as `aifactory up`'s train stage does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from waiting import scaled

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.acceptance]

REPO = Path(__file__).resolve().parents[2]
MODEL = "vitals-mlp"
HOLDOUT = "vitals-holdout"
NODE_DECISION_LOG = "/var/lib/aifactory/runtime/decisions.jsonl"
SERVE_PORT = 8600  # the runtime role's runtime_serve_port
CHAMPION_STEPS = 20
LOOP = f"""
loop:
  - model: {MODEL}
    trigger: {{new_samples: 100}}
    evaluation: {{dataset: {HOLDOUT}, version: 1}}
    metrics:
      - {{name: accuracy, better: higher, min_improvement: 0.01, min_relative_improvement: 0.01}}
      - {{name: log-loss, better: lower, tolerance: 0.02}}
"""
HOLDOUT_DATASET = f"""  - name: {HOLDOUT}
    owner: health
    classification: confidential
    residency: NG
    storage: share
    path: /datasets/{HOLDOUT}
"""


@dataclass
class LoopLab:
    deployed: Any  # DeployedLab
    spec: Path
    work: Path
    plan: Any  # SitePlan
    token: Path
    x: Any  # the teacher's samples (numpy), and their labels
    y: Any

    @property
    def lab(self) -> Any:  # LabSession
        return self.deployed.lab

    def here(self, storage: str, path: str) -> Path:
        from aifactory.loop.turn import Places

        return Places(self.plan, lab=True).here(storage, path)

    def dataset_dir(self, name: str) -> Path:
        dataset = next(d for d in self.plan.datasets if d.name == name)
        return self.here(dataset.storage, dataset.path)

    @property
    def model_dir(self) -> Path:
        model = next(m for m in self.plan.models if m.name == MODEL)
        return self.here(model.storage, model.path)

    @property
    def node(self) -> str:
        return next(h.name for h in self.plan.hosts if h.role == "cpu")

    def job(self, name: str, steps: int) -> Path:
        """A training job as an operator writes one for the loop: one cpu node, a small network."""
        from aifactory.state import SiteState

        job = {
            "schema": "aifactory.job/v1",
            "name": name,
            "plan": "/etc/aifactory/plan.json",  # the bundle's signed plan on each host
            "token_file": str(self.token),
            "dataset": "vitals",
            "model": MODEL,
            "hosts": [self.node],
            "processes_per_host": 1,
            "runtime_dir": str(SiteState.for_site(self.plan.name).subdir("runtime")),
            "network": {"hidden": 32, "layers": 2},
            "train": {"steps": steps, "global_batch": 32, "learning_rate": 0.01, "checkpoint_every": 20},
        }
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(job))
        path.chmod(0o644)
        return path

    def cli(self, *argv: str, check: bool = True) -> dict[str, Any]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run(
            [sys.executable, "-m", "aifactory.cli.main", *argv, "--format", "json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=scaled(1800),
            check=False,
        )
        assert done.returncode == 0 or not check, done.stdout[-4000:] + done.stderr[-4000:]
        return dict(json.loads(done.stdout))

    def champion(self) -> str:
        from aifactory.state import SiteState
        from aifactory.trust.issuing.models import ModelKey
        from aifactory.trust.models import Registry, read_promotions

        trust = ModelKey(SiteState.for_site(self.plan.name).subdir("runtime")).trust
        found = read_promotions(Registry(self.model_dir), trust).alias("champion")
        assert found is not None
        return found.digest

    def served(self, digest: str) -> dict[str, Any]:
        """One allowed request to a serving node once it serves `digest` (the serve stage's probe,
        on the control host): the answer names the version and the decision."""
        from aifactory.state import SiteState
        from aifactory.trust.issuing.tokens import issue_token
        from aifactory.trust.tokens import TrustFiles

        host = self.plan.host(self.node)
        granted = {
            g.tenant for g in self.plan.access if g.resource == f"model/{MODEL}" and "infer" in g.actions
        }
        outsider = next(t.name for t in self.plan.tenants if t.name not in granted | {"health"})
        denied = self.work / "denied.token"
        expires = datetime.now(UTC) + timedelta(hours=2)
        trust = TrustFiles(SiteState.for_site(self.plan.name).subdir("runtime"))
        denied.write_text(issue_token(trust, site=self.plan.name, tenant=outsider, expires=expires).token)
        denied.chmod(0o600)
        probe = self.lab.exec(
            [
                sys.executable,
                "-m",
                "aifactory.pipeline.serve_probe",
                f"http://{host.management_address}:{SERVE_PORT}",
                MODEL,
                str(self.token),
                str(denied),
                str(scaled(120)),
                "--digest",
                digest,
            ],
            timeout=scaled(240),
            env={"PYTHONPATH": str(REPO)},
        )
        allowed: dict[str, Any] = json.loads(probe.stdout)["allowed"]
        assert allowed["status"] == 200 and allowed["digest"] == digest, allowed
        return allowed


@pytest.fixture(scope="module")
def loop_lab(deployed_lab: Any, tmp_path_factory: pytest.TempPathFactory) -> LoopLab:
    pytest.importorskip("torch")
    from aifactory.data.versions import create_version
    from aifactory.loop.jobs import SlurmJobs
    from aifactory.pipeline.connection import site_connection
    from aifactory.plan import plan_site
    from aifactory.runtime import dataset as datasets
    from aifactory.scheduler.slurm import client_for
    from aifactory.state import SiteState
    from aifactory.trust.authz import load_authorizer
    from aifactory.trust.issuing.models import ensure_model_key, promote, register
    from aifactory.trust.issuing.tokens import issue_token
    from aifactory.trust.tokens import TrustFiles

    lab = deployed_lab.lab
    work = tmp_path_factory.mktemp("loop-lab")
    work.chmod(0o755)  # the node reads the job files from here (as root)
    spec = work / "site.yaml"
    text = lab.spec.read_text()
    found = yaml.safe_load(text)
    if HOLDOUT not in {d["name"] for d in found["datasets"]}:
        text = text.replace("models:\n", HOLDOUT_DATASET + "models:\n", 1)
    if not any(entry["model"] == MODEL for entry in found.get("loop") or ()):
        text += LOOP
    spec.write_text(text)
    shutil.copyfile(lab.spec.with_name("site.alloc.json"), work / "site.alloc.json")
    plan = plan_site(spec, write_lock=False).plan
    runtime = SiteState.for_site(plan.name).subdir("runtime")
    token = work / "health.token"
    expires = datetime.now(UTC) + timedelta(hours=2)
    token.write_text(issue_token(TrustFiles(runtime), site=plan.name, tenant="health", expires=expires).token)
    token.chmod(0o600)
    x, y = datasets.teacher_samples(samples=5120, features=16, classes=4, seed=7)
    found = LoopLab(deployed_lab, spec, work, plan, token, x, y)
    key = ensure_model_key(runtime)
    datasets.write(
        found.dataset_dir(HOLDOUT), name=HOLDOUT, x=x[4096:4608], y=y[4096:4608], classes=4, seed=7
    )
    made = create_version(
        plan=plan,
        dataset=HOLDOUT,
        dataset_dir=found.dataset_dir(HOLDOUT),
        key=key,
        authorizer=load_authorizer(plan),
    )
    # The loop evaluates on this version: `aifactory up`'s loop stage (an earlier module on the session
    # lab) made version 1 from its own seed's draw, another teacher than this test's.
    evaluation = f"evaluation: {{dataset: {HOLDOUT}, version: 1}}"
    assert evaluation in spec.read_text()
    pinned = f"evaluation: {{dataset: {HOLDOUT}, version: {made.version.number}}}"
    spec.write_text(spec.read_text().replace(evaluation, pinned))
    found.plan = plan_site(spec, write_lock=False).plan
    datasets.write(found.dataset_dir("vitals"), name="vitals", x=x[:128], y=y[:128], classes=4, seed=7)

    # The first champion, as `aifactory up`'s train stage makes it: trained through Slurm from no
    # checkpoint (any left by an earlier module are set aside), signed, promoted.
    shutil.rmtree(found.model_dir / "checkpoints", ignore_errors=True)
    jobs = SlurmJobs(plan_site(spec, write_lock=False), client_for(site_connection(plan.name)))
    submitted = jobs.submit_training(found.job("loop-lab-champion", CHAMPION_STEPS))
    assert jobs.wait(submitted) == "COMPLETED", f"the champion's job {submitted.slurm_job_id} failed"
    version = register(
        model_dir=found.model_dir,
        checkpoint=found.model_dir / "checkpoints" / f"step-{CHAMPION_STEPS:08d}",
        key=key,
        job={
            "name": submitted.name,
            "slurm_job_id": submitted.slurm_job_id,
            "decision_id": submitted.decision_id,
        },
        dataset={"name": "vitals"},
    )
    promote(model_dir=found.model_dir, digest=version.digest, alias="champion", key=key, reason="loop lab")
    found.served(version.digest)
    return found


def test_two_turns_promote_better_models_the_server_answers_with_them_and_a_decision_traces_to_its_data(
    loop_lab: LoopLab, tmp_path: Path
) -> None:
    from aifactory.runtime import dataset as datasets

    x, y = loop_lab.x, loop_lab.y
    answers = []
    turns = []
    for size, steps in ((256, 40), (4096, 200)):
        datasets.write(
            loop_lab.dataset_dir("vitals"), name="vitals", x=x[:size], y=y[:size], classes=4, seed=7
        )
        before = loop_lab.champion()
        turn = loop_lab.cli(
            "loop", "run", str(loop_lab.spec), MODEL, "--job", str(loop_lab.job(f"loop-lab-{size}", steps))
        )
        assert turn["status"] == "promoted", turn["steps"].get("decide")
        report = turn["steps"]["evaluate"]["report"]
        assert report["challenger"]["metrics"]["accuracy"] > report["champion"]["metrics"]["accuracy"]
        assert turn["steps"]["train"]["from_champion"] == before
        assert turn["steps"]["train"]["slurm_job_id"] != turn["steps"]["evaluate"]["slurm_job_id"]
        challenger = turn["steps"]["register"]["challenger"]
        assert loop_lab.champion() == challenger != before
        answers.append(loop_lab.served(challenger))  # the server answers with the new champion
        turns.append(turn)
    one, two = turns
    assert (one["turn"], two["turn"]) == (one["turn"], one["turn"] + 1)
    assert two["steps"]["version"]["version"] == one["steps"]["version"]["version"] + 1

    log = tmp_path / "decisions.jsonl"  # the node's decision log, as an auditor copies it off the node
    log.write_text(loop_lab.deployed.ssh(loop_lab.node, f"cat {NODE_DECISION_LOG}").stdout)
    lineage = loop_lab.cli(
        "lineage", str(loop_lab.spec), answers[-1]["decision_id"], "--decision-log", str(log)
    )
    assert lineage["verified"] is True, [link for link in lineage["links"] if not link["verified"]]
    links = {(link["kind"], link["name"]) for link in lineage["links"]}
    assert ("model-version", two["steps"]["register"]["challenger"]) in links
    trained_on = f"vitals v{two['steps']['version']['version']}"
    (held_out,) = {entry.evaluation.version for entry in loop_lab.plan.loop or () if entry.model == MODEL}
    assert ("dataset-version", trained_on) in links and ("dataset-version", f"{HOLDOUT} v{held_out}") in links
    assert all(link["verified"] for link in lineage["links"])


def test_a_canary_with_a_higher_error_rate_than_the_champion_is_rolled_back_by_itself_in_under_60_s(
    loop_lab: LoopLab, tmp_path: Path
) -> None:
    """The acceptance line of issue 30's canary, on the lab's serving node: a signed canary that answers
    the tenant's labelled requests wrongly (the tenant's feedback says so) is withdrawn by the node's
    server within 60 s of its first wrong answer, with the control host away (nothing runs there but
    the tenant's client); the champion answers everything afterwards; the node's signed rollback record
    verifies against the node's log key, and the loop reads the canary as regressed."""
    import torch

    from aifactory.loop.canary import canary_state
    from aifactory.runtime import checkpoint
    from aifactory.runtime.model import MLP, ModelConfig, build
    from aifactory.state import SiteState
    from aifactory.trust.canary import CanarySettings, verify_rollback
    from aifactory.trust.issuing.models import ModelKey, promote, register
    from aifactory.trust.models import Registry

    from .canary_client import INPUTS

    champion = loop_lab.champion()
    registry = Registry(loop_lab.model_dir)
    found = checkpoint.load(registry.files(champion))
    network = ModelConfig.from_dict(found.meta["network"])
    scorer = MLP(network)
    scorer.load_state_dict(found.model_state)
    with torch.inference_mode():
        label = int(scorer(torch.tensor(INPUTS["inputs"])).argmax(dim=1)[0])  # what the champion answers

    config = ModelConfig(features=16, classes=4, hidden=16, layers=2)
    state = build(config, seed=11).state_dict()
    state["head.bias"] = torch.zeros(4)
    state["head.bias"][(label + 1) % 4] = 50.0  # answers another class, whatever it is asked
    saved = checkpoint.save(
        tmp_path / "canary",
        step=1,
        model_state=state,
        optimizer_state={},
        meta={"model": MODEL, "network": config.as_dict()},
    )
    key = ModelKey(SiteState.for_site(loop_lab.plan.name).subdir("runtime"))
    version = register(
        model_dir=loop_lab.model_dir,
        checkpoint=saved,
        key=key,
        job={"name": "canary-lab"},
        dataset={"name": "vitals"},
    )
    settings = CanarySettings(share=0.5, min_requests=10, window_seconds=60, error_margin=0.1)
    promote(
        model_dir=loop_lab.model_dir,
        digest=version.digest,
        alias="canary",
        key=key,
        reason="canary lab test",
        canary=settings,
    )
    host = loop_lab.plan.host(loop_lab.node)
    client = loop_lab.lab.exec(
        [
            sys.executable,
            "-m",
            "tests.loop.canary_client",
            f"http://{host.management_address}:{SERVE_PORT}",
            MODEL,
            str(loop_lab.token),
            str(label),
            version.digest,
            str(scaled(240)),
        ],
        timeout=scaled(400),
        env={"PYTHONPATH": str(REPO)},
    )
    seen = json.loads(client.stdout)
    answers = seen["answers"]
    assert seen["withdrawn"] is not None, "the canary was never withdrawn"
    assert seen["first_bad"] is not None
    assert seen["withdrawn"] - seen["first_bad"] < 60, seen
    assert {a["digest"] for a in answers} >= {champion, version.digest}
    assert all((a["class"] == label) == (a["digest"] == champion) for a in answers)
    assert set(seen["after"]) == {champion}

    signers = tmp_path / "node-log-signers"
    signers.write_text(
        loop_lab.deployed.ssh(loop_lab.node, "cat /var/lib/aifactory/runtime/log-key/allowed_signers").stdout
    )
    record = verify_rollback(loop_lab.model_dir, version.digest, [signers])
    assert record is not None and record["champion"] == champion and record["host"] == loop_lab.node
    assert record["canary_error_rate"] > record["champion_error_rate"] + settings.error_margin
    state_now = canary_state(
        model_dir=loop_lab.model_dir,
        digest=version.digest,
        trust=key.trust,
        signers=[signers],
        hold=timedelta(minutes=1),
        now=datetime.now(UTC),
    )
    assert state_now.state == "regressed"
    assert loop_lab.champion() == champion


def test_with_sign_off_required_the_lab_promotes_nothing_until_a_named_person_signs_off(
    loop_lab: LoopLab, tmp_path: Path
) -> None:
    """A third turn through real Slurm under a spec whose loop requires a sign-off: the turn stops at
    `awaiting-sign-off` (exit 1, the champion keeps serving); `aifactory loop sign-off` with the key of
    the person the spec names (made by the stock ssh-keygen) signs that challenger, and the next run
    promotes it: the server answers with it. The thresholds are looser than the first two turns' (a
    third turn on little more data gains less), still above zero."""
    from aifactory.runtime import dataset as datasets

    spec = tmp_path / "site.yaml"
    loose = "min_improvement: 0.001, min_relative_improvement: 0.001"
    text = loop_lab.spec.read_text().replace("min_improvement: 0.01, min_relative_improvement: 0.01", loose)
    guard = "      - {name: log-loss, better: lower, tolerance: 0.02}\n"  # the loop entry's last line
    text = text.replace(guard, guard + "    sign_off: {by: [dr.ade@health.example]}\n")
    assert loose in text and "sign_off:" in text
    spec.write_text(text)
    shutil.copyfile(loop_lab.spec.with_name("site.alloc.json"), tmp_path / "site.alloc.json")
    key = tmp_path / "ade"
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dr.ade", "-f", str(key)]
    subprocess.run(keygen, check=True)
    kind, blob, *_ = key.with_suffix(".pub").read_text().split()
    signers = tmp_path / "allowed_signers"
    signers.write_text(f'dr.ade@health.example namespaces="aifactory-sign-off" {kind} {blob}\n')

    fresh = [*range(4096), *range(4608, 5120)]  # the held-out slice 4096..4608 is never trained on
    x, y = loop_lab.x[fresh], loop_lab.y[fresh]
    datasets.write(loop_lab.dataset_dir("vitals"), name="vitals", x=x, y=y, classes=4, seed=7)
    champion = loop_lab.champion()
    run = ["loop", "run", str(spec), MODEL, "--job", str(loop_lab.job("loop-lab-sign-off", 400))]
    run += ["--allowed-signers", str(signers)]
    waiting = loop_lab.cli(*run, check=False)
    assert waiting["status"] == "awaiting-sign-off", waiting["steps"].get("decide")
    assert waiting["steps"]["decide"]["reasons"] == ["sign-off-missing"]
    assert loop_lab.champion() == champion
    loop_lab.served(champion)  # nothing promoted: the champion still answers
    challenger = waiting["steps"]["register"]["challenger"]

    signed = loop_lab.cli(
        "loop", "sign-off", str(spec), challenger, "--key", str(key), "--allowed-signers", str(signers)
    )
    assert signed["model"] == MODEL and signed["turn"] == waiting["turn"]
    done = loop_lab.cli(*run)
    assert (done["turn"], done["status"]) == (waiting["turn"], "promoted"), done["steps"].get("decide")
    assert loop_lab.champion() == challenger
    loop_lab.served(challenger)


def test_a_candidate_trained_on_shuffled_labels_is_refused_on_the_lab_and_the_champion_keeps_serving(
    loop_lab: LoopLab,
) -> None:
    """A turn through real Slurm on a data version whose labels were shuffled: evaluated on the
    held-out set, it is refused with its reason code (exit 1); the champion is unchanged and answers."""
    import numpy as np

    from aifactory.runtime import dataset as datasets

    x, y = loop_lab.x[:4096], loop_lab.y[:4096]
    shuffled = np.random.Generator(np.random.PCG64(3)).permutation(y)
    datasets.write(loop_lab.dataset_dir("vitals"), name="vitals", x=x, y=shuffled, classes=4, seed=7)
    champion = loop_lab.champion()
    turn = loop_lab.cli(
        "loop", "run", str(loop_lab.spec), MODEL, "--job", str(loop_lab.job("loop-lab-shuffled", 200)),
        check=False,
    )  # fmt: skip
    assert turn["status"] == "refused", turn["steps"].get("decide")
    assert "no-improvement" in turn["steps"]["decide"]["reasons"], turn["steps"]["decide"]
    assert "promote" not in turn["steps"]
    assert loop_lab.champion() == champion
    loop_lab.served(champion)
