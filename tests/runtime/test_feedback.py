"""Feedback on past decisions (issue 29), through two real `aifactory-serve` processes that share one
storage root, as two serving nodes share the site storage: feedback given to either node finds a
decision made on the other, is decided by the real runtime policy (action `contribute` on the dataset)
and recorded in that node's decision log, and is stored on the dataset's storage, never in a log; the
next dataset version holds it. Refusals are 403 with a reason code and store nothing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aifactory.data.feedback import pending_dir
from aifactory.data.versions import FEEDBACK_FILE, DatasetStore, create_version
from aifactory.plan.model import SitePlan
from aifactory.policy import RuntimeAuthorizer
from aifactory.trust.issuing.models import ensure_model_key

from .conftest import DATASET_PATH, RuntimeSite
from .serving import BODY, MODEL_PATH, PATH, Server, records, start_server, wait_for_model, write_checkpoint

pytest.importorskip("torch")


@dataclass
class Nodes:
    a: Server  # rtlab-cpu-001
    b: Server  # rtlab-cpu-002
    storage: Path

    @property
    def dataset_dir(self) -> Path:
        return self.storage / DATASET_PATH


@pytest.fixture(scope="module")
def nodes(site: RuntimeSite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    root = tmp_path_factory.mktemp("feedback")
    storage = root / "storage"
    (storage / DATASET_PATH).parent.mkdir(parents=True)
    shutil.copytree(site.dataset_dir, storage / DATASET_PATH)
    write_checkpoint(site, storage)
    a = start_server(site, storage, root / "runtime-a")
    b = start_server(site, storage, root / "runtime-b", "--host-name", "rtlab-cpu-002")
    try:
        wait_for_model(a)
        wait_for_model(b)
        yield Nodes(a, b, storage)
    finally:
        assert a.stop() == 0
        assert b.stop() == 0


def infer(server: Server, token: str) -> str:
    status, answer = server.call("POST", PATH, BODY, token=token)
    assert status == 200, answer
    return str(answer["decision_id"])


def pending(nodes: Nodes) -> list[str]:
    folder = pending_dir(nodes.dataset_dir)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_feedback_on_a_decision_made_on_the_other_node_is_stored_and_lands_in_the_next_version(
    nodes: Nodes, site: RuntimeSite
) -> None:
    decision = infer(nodes.a, site.tokens["health"])  # decided on node A
    body = {"subject": "patient-0042", "outcome": {"label": 3, "note": "OUTCOME-TEXT-0042"}}
    status, answer = nodes.b.call(
        "POST", f"/v1/decisions/{decision}/feedback", body, token=site.tokens["health"]
    )  # given on node B
    assert status == 202, answer
    assert (answer["status"], answer["feedback_on"], answer["dataset"]) == ("pending", decision, "vitals")
    stored = json.loads((pending_dir(nodes.dataset_dir) / f"{decision}.json").read_text())
    assert (stored["tenant"], stored["subject"], stored["outcome"]) == (
        "health",
        "patient-0042",
        body["outcome"],
    )
    assert (stored["received_by"], stored["received_in"], stored["model"]) == (
        "rtlab-cpu-002",
        "NG",
        "vitals-mlp",
    )
    # B decided and recorded the contribution; no decision log holds what the feedback said.
    recorded = records(nodes.b)[answer["decision_id"]]
    assert (recorded["action"], recorded["resource"], recorded["allow"], recorded["tenant"]) == (
        "contribute",
        "dataset/vitals",
        True,
        "health",
    )
    assert recorded["request"]["feedback_on"] == decision
    for server in (nodes.a, nodes.b):
        text = server.log_path.read_text()
        assert "patient-0042" not in text and "OUTCOME-TEXT-0042" not in text
    # The next version holds it.
    plan = SitePlan.load(site.plan_path)
    made = create_version(
        plan=plan,
        dataset="vitals",
        dataset_dir=nodes.dataset_dir,
        key=ensure_model_key(site.runtime_dir),
        authorizer=RuntimeAuthorizer(plan),
    )
    entry = next(f for f in made.version.files if f["path"] == FEEDBACK_FILE)
    lines = DatasetStore(nodes.dataset_dir).object(entry["sha256"]).read_bytes().splitlines()
    assert decision in {json.loads(line)["decision_id"] for line in lines}
    assert f"{decision}.json" not in pending(nodes)


def test_feedback_refused_is_403_with_a_reason_code_and_stores_nothing(
    nodes: Nodes, site: RuntimeSite
) -> None:
    analysts = infer(nodes.a, site.tokens["analyst"])  # analyst may infer (a grant), not contribute
    owners = infer(nodes.b, site.tokens["health"])
    before = pending(nodes)
    cases = [
        (analysts, "analyst", 403, "no-grant"),  # its own decision, but no contribute grant on vitals
        (analysts, "health", 403, "not-your-decision"),  # another tenant's decision
        (owners, "analyst", 403, "not-your-decision"),
        (owners, "visitor", 403, "not-your-decision"),
        (owners, "revoked", 403, "token-revoked"),
        (owners, None, 403, "token-missing"),
        ("e" * 32, "health", 404, "decision-not-found"),  # no such decision on any node
    ]
    for decision, tenant, code, reason in cases:
        for server in (nodes.a, nodes.b):
            status, answer = server.call(
                "POST",
                f"/v1/decisions/{decision}/feedback",
                {"subject": "patient-7", "outcome": "wrong"},
                token=site.tokens[tenant] if tenant else None,
            )
            assert (status, answer.get("reason")) == (code, reason), (tenant, answer)
            assert records(server)[answer["decision_id"]]["allow"] is False
    status, answer = nodes.a.call(
        "POST",
        f"/v1/decisions/{owners}/feedback",
        {"dataset": "weather", "subject": "patient-7", "outcome": "wrong"},
        token=site.tokens["health"],
    )  # a dataset the site does not have (and the model did not learn from)
    assert (status, answer["reasons"]) == (403, ["dataset-not-of-model", "unknown-resource"])
    assert pending(nodes) == before


def test_one_feedback_per_decision(nodes: Nodes, site: RuntimeSite) -> None:
    decision = infer(nodes.b, site.tokens["health"])
    path = f"/v1/decisions/{decision}/feedback"
    assert nodes.a.call("POST", path, {"subject": "p-1", "outcome": 1}, token=site.tokens["health"])[0] == 202
    status, answer = nodes.b.call("POST", path, {"subject": "p-1", "outcome": 2}, token=site.tokens["health"])
    assert (status, answer["error"]) == (409, "feedback-exists")
    assert json.loads((pending_dir(nodes.dataset_dir) / f"{decision}.json").read_text())["outcome"] == 1


@pytest.mark.parametrize(
    "decision",
    ["..", "%2e%2e%2fetc", "rt-..", "E" * 32, "e" * 31, "e" * 33, "e" * 31 + "%00", "rt-" + "e" * 31 + "/"],
)
def test_a_decision_id_outside_its_grammar_never_reaches_the_storage(
    nodes: Nodes, site: RuntimeSite, decision: str
) -> None:
    status, answer = nodes.a.call(
        "POST",
        f"/v1/decisions/{decision}/feedback",
        {"subject": "p-1", "outcome": 1},
        token=site.tokens["health"],
    )
    assert (status, answer["error"]) in ((400, "bad-decision-id"), (404, "not-found"))


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"subject": "../../etc/passwd", "outcome": 1}, "subject"),
        ({"subject": "p\n1", "outcome": 1}, "subject"),
        ({"dataset": "../models", "subject": "p-1", "outcome": 1}, "dataset"),
        ({"dataset": "Vitals", "subject": "p-1", "outcome": 1}, "dataset"),
        ({"subject": "p-1"}, "outcome"),
        ({"subject": "p-1", "outcome": "x" * 5000}, "outcome"),
        ({"subject": "p-1", "outcome": 1, "tenant": "health"}, "body"),
        ([1, 2], "body"),
    ],
)
def test_a_feedback_body_outside_its_grammar_is_refused_before_any_decision(
    nodes: Nodes, site: RuntimeSite, body: object, detail: str
) -> None:
    decision = "f" * 32
    status, answer = nodes.a.call(
        "POST", f"/v1/decisions/{decision}/feedback", body, token=site.tokens["health"]
    )
    assert (status, answer["error"]) == (400, "bad-input")
    assert detail in answer["detail"]
    assert "decision_id" not in answer


def test_receipts_live_on_the_models_storage_and_the_server_still_loads_only_signed_versions(
    nodes: Nodes, site: RuntimeSite
) -> None:
    decision = infer(nodes.a, site.tokens["health"])
    receipt = nodes.storage / MODEL_PATH / "decisions" / decision[:2] / f"{decision}.json"
    assert json.loads(receipt.read_text())["tenant"] == "health"
    health = nodes.a.call("GET", "/healthz", token=site.tokens["health"])[1]
    assert health["refused"]["vitals-mlp"] == []  # the receipts folder is not an unsigned model


def test_a_node_without_feedback_leaves_no_receipt_and_takes_none(
    nodes: Nodes, site: RuntimeSite, tmp_path: Path
) -> None:
    quiet = start_server(site, nodes.storage, tmp_path / "runtime-c", "--no-feedback")
    try:
        wait_for_model(quiet)
        decision = infer(quiet, site.tokens["health"])
        assert not (nodes.storage / MODEL_PATH / "decisions" / decision[:2] / f"{decision}.json").exists()
        status, answer = quiet.call(
            "POST",
            f"/v1/decisions/{decision}/feedback",
            {"subject": "p-1", "outcome": 1},
            token=site.tokens["health"],
        )
        assert (status, answer["error"]) == (404, "feedback-not-taken")
        status, answer = nodes.a.call(  # nor can another node take feedback on it: there is no receipt
            "POST",
            f"/v1/decisions/{decision}/feedback",
            {"subject": "p-1", "outcome": 1},
            token=site.tokens["health"],
        )
        assert (status, answer["reason"]) == (404, "decision-not-found")
    finally:
        assert quiet.stop() == 0
