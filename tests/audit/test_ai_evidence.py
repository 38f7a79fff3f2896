"""The report's AI section (issue 30, "For regulators") over a real registry of the loop's fixture site:
versions signed with model-signing, dataset versions made under the real runtime policy, training
manifests signed by the loop's own function, promotion decisions made by the real promotion policy
(`step_decide`) and promoted by `step_promote`, a canary rollback record signed with a real node
decision-log key. What stands in: the evaluation job's numbers are written by the test (no torch, no
Slurm), and checkpoints are files whose bytes do not matter to signing.

The site: a first champion (before the loop), turn 1 promoted by policy, turn 2 refused
(no-improvement), its challenger withdrawn as a canary by a server. Then a sign-off the spec asks
for and the champion lacks, tampered records, and a champion trained on the evaluation set."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
from auditfixtures import ROOT, TIMESTAMP, checkpoint_files

from aifactory.audit import ReportOptions, produce_report
from aifactory.audit.evidence.ai import AiSources, ai_evidence
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence
from aifactory.audit.record_keeping import (
    DECISION_RECORD_FIELDS,
    EVERY,
    RATE_LIMITED,
    field_paths,
    markdown_table,
)
from aifactory.data.versions import Version, create_version
from aifactory.loop.manifest import JobRef, sign_training_manifest
from aifactory.loop.turn import DECISION_FILE, Places, Turn, TurnSetup, step_decide, step_promote
from aifactory.plan import plan_site
from aifactory.plan.model import SignOffPlan, SitePlan
from aifactory.policy import RuntimeAuthorizer
from aifactory.state import SiteState
from aifactory.trust.authz import Outcome
from aifactory.trust.canary import CanarySettings, RoleCounts, rollback_path, write_rollback
from aifactory.trust.decisionlog import DecisionLog, log_key_dir
from aifactory.trust.issuing.models import ensure_model_key, promote, register

SITE = ROOT / "tests" / "loop" / "fixtures" / "site.yaml"
MODEL = "vitals-mlp"
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


@dataclass
class Site:
    plan: SitePlan
    setup: TurnSetup
    node_signers: tuple[Path, ...]
    digests: dict[str, str]  # first, promoted, refused

    @property
    def model_dir(self) -> Path:
        return self.setup.model_dir

    def sources(self) -> AiSources:
        datasets = tuple((d, self.setup.dataset_dir(d)) for d in ("vitals", "vitals-holdout"))
        return AiSources(
            models=((MODEL, self.model_dir),),
            datasets=datasets,
            trust=self.setup.key.trust.public_key,
            loop_state=self.setup.state_dir,
            node_signers=self.node_signers,
        )

    def evidence(self, plan: SitePlan | None = None) -> Evidence:
        return ai_evidence(plan or self.plan, self.sources())

    def version(self, dataset: str, files: dict[str, bytes]) -> Version:
        folder = self.setup.dataset_dir(dataset)
        for relative, body in files.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(body)
        made = create_version(
            plan=self.plan,
            dataset=dataset,
            dataset_dir=folder,
            key=self.setup.key,
            authorizer=self.setup.authorizer,
        )
        return made.version

    def trained(self, turn: int, step: int, training: Version) -> str:
        """A challenger the loop trained on `training`: its signed manifest in its provenance."""
        job = f"loop-{MODEL}-t{turn}"
        read = {"dataset": training.manifest["dataset"], "files": [dict(f) for f in training.files]}
        manifest = sign_training_manifest(
            model=MODEL,
            job=JobRef(job, str(40 + turn), f"dec-{turn}"),
            data_read=read,
            version=training,
            key=self.setup.key,
        )
        checkpoint = checkpoint_files(self.model_dir / "checkpoints" / f"step-{step:08d}", step)
        version = register(
            model_dir=self.model_dir,
            checkpoint=checkpoint,
            key=self.setup.key,
            job={
                "name": job,
                "slurm_job_id": str(40 + turn),
                "decision_id": f"dec-{turn}",
                "loop_turn": turn,
            },
            dataset={"name": "vitals", "version": training.number, "digest": training.digest},
            training_manifest=manifest,
        )
        (self.model_dir / "runs" / job).mkdir(parents=True, exist_ok=True)
        return version.digest

    def turn(self, number: int, challenger: str, champion: str, accuracy: float, evaluation: Version) -> Turn:
        """A turn at its decide step, as the earlier steps leave it; decided by the real policy."""
        folder = self.setup.state_dir / MODEL / f"turn-{number:06d}"
        folder.mkdir(parents=True)
        report = {
            "format": "aifactory.evaluation-report/v1",
            "model": MODEL,
            "evaluation_set": {"dataset": "vitals-holdout", "version": 1, "digest": evaluation.digest},
            "champion": {"digest": champion, "metrics": {"accuracy": 0.80, "log-loss": 0.50}},
            "challenger": {"digest": challenger, "metrics": {"accuracy": accuracy, "log-loss": 0.49}},
        }
        steps = {
            "train": {"job": f"loop-{MODEL}-t{number}"},
            "register": {"challenger": challenger, "champion": champion},
            "evaluate": {"report": report},
        }
        turn = Turn(folder, number, MODEL, steps=steps, done=["version", "train", "register", "evaluate"])
        step_decide(self.setup, turn)
        if turn.status == "running":
            step_promote(self.setup, turn)
        turn.save(NOW)
        return turn


def _without_canary(plan: SitePlan) -> SitePlan:
    loops = tuple(dataclasses.replace(entry, canary=None) for entry in plan.loop or ())
    return dataclasses.replace(plan, loop=loops)


def _with_sign_off(plan: SitePlan) -> SitePlan:
    loops = tuple(
        dataclasses.replace(entry, sign_off=SignOffPlan(by=("dr.ade@health.example",)))
        for entry in plan.loop or ()
    )
    return dataclasses.replace(plan, loop=loops)


@pytest.fixture
def site(tmp_path: Path, state_home: Path) -> Site:
    plan = _without_canary(plan_site(SITE, write_lock=False).plan)
    key = ensure_model_key(tmp_path / "runtime")
    state_dir = SiteState.for_site(plan.name).path("loop")
    shutil.rmtree(state_dir, ignore_errors=True)  # the state home is the session's: each test its own turns
    setup = TurnSetup(
        plan=plan,
        model=MODEL,
        job_template=tmp_path / "job.yaml",
        key=key,
        authorizer=RuntimeAuthorizer(plan),
        jobs=None,  # type: ignore[arg-type]  # no job is submitted: the turns start at their decide step
        places=Places(plan, root=tmp_path / "storage", node_trust=key.trust.public_key),
        state_dir=state_dir,
        allowed_signers=tmp_path / "allowed_signers",
        now=lambda: NOW,
    )
    site = Site(plan, setup, (), {})
    training = site.version("vitals", {"train/shard-0.bin": b"training samples 0-4095"})
    evaluation = site.version("vitals-holdout", {"eval/shard-0.bin": b"held-out samples 4096-4607"})
    first = register(
        model_dir=site.model_dir,
        checkpoint=checkpoint_files(site.model_dir / "checkpoints" / "step-00000010", 10),
        key=key,
        job={"name": "up-train"},
        dataset={"name": "vitals"},
    )
    promote(model_dir=site.model_dir, digest=first.digest, alias="champion", key=key, reason="first", now=NOW)
    promoted = site.trained(1, 20, training)
    site.turn(1, promoted, first.digest, 0.85, evaluation)
    refused = site.trained(2, 30, training)
    site.turn(2, refused, promoted, 0.70, evaluation)  # worse than the champion: no-improvement
    node_log = tmp_path / "node" / "decisions.jsonl"
    DecisionLog(node_log).close()  # the serving node's log key, made as the server makes it
    write_rollback(
        model_dir=site.model_dir,
        model=MODEL,
        canary=refused,
        champion=promoted,
        canary_counts=RoleCounts(requests=20, errors=9),
        champion_counts=RoleCounts(requests=180, errors=2),
        settings=CanarySettings(share=0.1),
        host="looplab-cpu-001",
        key_file=log_key_dir(node_log) / "signing_key",
        now=NOW,
    )
    site.node_signers = (log_key_dir(node_log) / "allowed_signers",)
    site.digests = {"first": first.digest, "promoted": promoted, "refused": refused}
    return site


def _statuses(section: Evidence) -> dict[str, str]:
    return {rule.id: rule.status for _, rule in section.rules}


def test_promotion_refusal_rollback_and_lineage_each_pass(site: Site) -> None:
    section = site.evidence()
    assert section.status == PASS and not section.findings, [f.message for f in section.findings]
    assert _statuses(section) == {
        "ai.promotion-decisions-verify": PASS,
        "ai.champion-signed-off": NOT_ASSESSED,  # the fixture's loop asks for none
        "ai.evaluation-set-held-out": PASS,
        "ai.champion-lineage-verifies": PASS,
        "ai.canary-rollbacks-verify": PASS,
    }
    controls = {rule.id: control for control, rule in section.rules}
    assert controls["ai.canary-rollbacks-verify"] == "AU-10"
    assert controls["ai.champion-lineage-verifies"] == "SI-7"
    (model,) = section.detail["models"]
    assert model["champion"]["digest"] == site.digests["promoted"]
    promotions = [(p["alias"], p["digest"]) for p in model["promotions"]]
    # The register step (not run here) would add each challenger's record.
    assert promotions == [("champion", site.digests["first"]), ("champion", site.digests["promoted"])]
    first, by_policy = model["promotions"]
    assert first["decision"] == "none: not a version the loop trained"
    assert by_policy["decision"]["verified"] and by_policy["decision"]["promote"] is True
    assert by_policy["decision"]["turn"] == 1 and by_policy["decision"]["reasons"] == []
    assert model["refused_turns"] == [
        {
            "turn": 2,
            "challenger": site.digests["refused"],
            "reasons": ["no-improvement"],
            "decision": "verified",
        }
    ]
    (rollback,) = model["canary_rollbacks"]
    assert (rollback["canary"], rollback["verified"], rollback["canary_error_rate"]) == (
        site.digests["refused"],
        True,
        0.45,
    )
    lineage = model["champion_lineage"]
    assert lineage["verified"] is True
    assert [link["kind"] for link in lineage["links"]] == [
        "promotion",
        "promotion-decision",
        "training-manifest",
        "dataset-version",
        "dataset-version",
    ]


def test_a_champion_without_the_sign_off_the_loop_requires_is_a_cm3_finding(site: Site) -> None:
    section = site.evidence(_with_sign_off(site.plan))
    assert _statuses(section)["ai.champion-signed-off"] == FAIL
    (finding,) = section.findings
    assert (finding.rule, finding.controls) == ("ai.champion-signed-off", ("CM-3",))
    assert finding.resource == f"model/{MODEL}/{site.digests['promoted']}"
    assert "dr.ade@health.example" in finding.message and "carries no sign-off" in finding.message


def test_tampered_decision_and_rollback_records_are_findings(site: Site) -> None:
    decision = site.model_dir / "runs" / f"loop-{MODEL}-t2" / DECISION_FILE
    edited = json.loads(decision.read_text())
    edited["reasons"] = []  # as if turn 2 had been allowed
    decision.write_text(json.dumps(edited))
    rollback = rollback_path(site.model_dir, site.digests["refused"])
    record = json.loads(rollback.read_text())
    record["canary_errors"] = 0
    rollback.write_text(json.dumps(record))
    section = site.evidence()
    assert section.status == FAIL
    found = sorted((f.rule, f.controls, f.resource) for f in section.findings)
    assert found == [
        ("ai.canary-rollbacks-verify", ("AU-10",), f"model/{MODEL}/canary/{rollback.name}"),
        ("ai.promotion-decisions-verify", ("CM-3",), f"model/{MODEL}/turn/2"),
    ]
    # The champion's own decision, edited: its promotion, its lineage and the section say so.
    champion_decision = site.model_dir / "runs" / f"loop-{MODEL}-t1" / DECISION_FILE
    champion_decision.write_text(champion_decision.read_text().replace('"turn":1', '"turn":7'))
    rules = {f.rule for f in site.evidence().findings}
    assert {"ai.promotion-decisions-verify", "ai.champion-lineage-verifies"} <= rules


def test_a_champion_trained_on_a_file_of_the_evaluation_set_is_a_finding(site: Site) -> None:
    held_out = b"held-out samples 4096-4607"
    leaked = site.version("vitals", {"train/copied.bin": held_out})
    digest = site.trained(3, 40, leaked)
    promote(model_dir=site.model_dir, digest=digest, alias="champion", key=site.setup.key, reason="by hand")
    section = site.evidence()
    held = [f for f in section.findings if f.rule == "ai.evaluation-set-held-out"]
    assert [(f.controls, f.resource) for f in held] == [
        (("CM-3",), f"model/{MODEL}/{digest}/training-manifest")
    ]
    assert "train/copied.bin" in held[0].message and "eval/shard-0.bin" in held[0].message
    # Promoted by hand, with no decision: that is a finding too.
    assert "ai.promotion-decisions-verify" in {f.rule for f in section.findings}


def test_the_report_with_the_ai_section_is_byte_identical_on_two_runs(site: Site, tmp_path: Path) -> None:
    planned = plan_site(SITE, write_lock=False)
    options = ReportOptions(
        timestamp=TIMESTAMP,
        models=((MODEL, site.model_dir),),
        model_trust=site.setup.key.trust.public_key,
        datasets=site.sources().datasets,
    )
    first = produce_report(planned, tmp_path / "one", options)
    produce_report(planned, tmp_path / "two", options)
    for name in first.files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    schema = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    jsonschema.validate(json.loads((tmp_path / "one" / "report.json").read_text()), schema)
    html = (tmp_path / "one" / "report.html").read_text()
    assert 'id="evidence-ai"' in html and 'href="#evidence-ai"' in html
    assert "Art. 12(2)(b)" in html and "not a legal opinion" in html
    (section,) = [e for e in first.report.evidence if e.name == "ai"]
    assert section.detail["models"][0]["refused_turns"][0]["reasons"] == ["no-improvement"]


def test_the_mapping_table_is_in_the_docs_as_the_code_has_it() -> None:
    table = markdown_table()
    for doc in ("docs/loop.md", "docs/audit.md"):
        assert table in (ROOT / doc).read_text(), f"{doc} does not hold the table of record_keeping"
    assert len({m.field for m in DECISION_RECORD_FIELDS}) == len(DECISION_RECORD_FIELDS)
    for mapping in DECISION_RECORD_FIELDS:  # only what is sure: Art. 12 and MEASURE 2.x / MANAGE 4.x
        assert all(a.startswith("Art. 12(") for a in mapping.eu_ai_act)
        assert all(n.startswith(("MEASURE 2.", "MANAGE 4.")) for n in mapping.nist_ai_rmf)


def test_every_field_the_table_names_for_every_record_is_in_a_real_record(tmp_path: Path) -> None:
    """The fields of every record, written by the real decision log; the request fields of inference
    and feedback records are checked on a real server (tests/runtime/test_canary.py)."""
    log = DecisionLog(tmp_path / "decisions.jsonl")
    outcome = Outcome(
        True, (), "rt-1", "infer", f"model/{MODEL}", "health", "tok-1", ("AC-3",), identity="token"
    )
    log.record(outcome.record(component="serve", host="looplab-cpu-001"))
    log.close()
    record = json.loads((tmp_path / "decisions.jsonl").read_text().splitlines()[0])
    every = {m.field for m in DECISION_RECORD_FIELDS if m.written == EVERY}
    assert every <= field_paths(record), every - field_paths(record)


def test_the_rate_limited_summary_record_has_the_fields_the_table_names(tmp_path: Path) -> None:
    pytest.importorskip("torch")  # the server module loads the model code
    from aifactory.runtime.limits import Suppressed
    from aifactory.runtime.server import _suppressed_outcome

    log = DecisionLog(tmp_path / "decisions.jsonl")
    outcome = _suppressed_outcome(Suppressed("127.0.2.1", 40, 1_790_000_000.0, 2.0))
    log.record(outcome.record(component="serve", host="looplab-cpu-001"))
    log.close()
    record = json.loads((tmp_path / "decisions.jsonl").read_text().splitlines()[0])
    named = {m.field for m in DECISION_RECORD_FIELDS if m.written in (EVERY, RATE_LIMITED)}
    assert named <= field_paths(record), named - field_paths(record)
