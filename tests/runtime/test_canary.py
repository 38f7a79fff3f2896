"""The canary (issue 30), on a real `aifactory-serve` process on loopback: the registry's `canary`
alias takes a share of the requests beside the champion; a canary that answers the test's labelled
requests wrongly (feedback from the tenant marks them so) is withdrawn by the server itself within
60 s of its first bad answer, the champion answers everything afterwards, and the signed rollback
record verifies (and a tampered one does not). A canary that answers as well as the champion is
never withdrawn, and the loop finishes its promotion once it held.

The two versions are real checkpoints of the runtime's MLP, signed into the registry; what makes one
right or wrong for the test's requests is its head's bias (one class far above the others), so each
version's answer is known before it is asked and the feedback says what the answer really was."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from aifactory.audit.record_keeping import (
    CANARY,
    DECISION_RECORD_FIELDS,
    EVERY,
    FEEDBACK,
    INFERENCE,
    field_paths,
)
from aifactory.errors import ModelRegistryError
from aifactory.trust.canary import CanarySettings, rollback_path, verify_rollback
from aifactory.trust.models import Registry, read_promotions

from .conftest import DATASET_PATH, RuntimeSite
from .serving import MODEL_PATH, PATH, Server, records, start_server, wait_for_model

torch = pytest.importorskip("torch")

LABEL = 0  # the true class of every labelled request of these tests
INPUTS = {"inputs": [[0.2] * 16]}
# Requests go to the canary by a hash of their random decision id (half each): with min_requests=5, the
# first five all went to the canary once in 32 runs, and the bad canary was withdrawn before the
# champion had answered any (the test asserts both answered). With 16, that chance is one in 65,536.
SETTINGS = CanarySettings(share=0.5, min_requests=16, window_seconds=60, error_margin=0.1)


@dataclass
class Registered:
    storage: Path
    champion: str
    canary: str

    @property
    def model_dir(self) -> Path:
        return self.storage / MODEL_PATH


def answering_checkpoint(storage: Path, *, step: int, answer: int, seed: int) -> Path:
    """A checkpoint of the runtime's MLP whose head answers `answer` for any input."""
    from aifactory.runtime import checkpoint
    from aifactory.runtime.model import ModelConfig, build

    config = ModelConfig(features=16, classes=4, hidden=16, layers=2)
    state = build(config, seed=seed).state_dict()
    bias = torch.zeros(config.classes)
    bias[answer] = 50.0
    state["head.bias"] = bias
    return checkpoint.save(
        storage / MODEL_PATH / "checkpoints",
        step=step,
        model_state=state,
        optimizer_state={},
        meta={"model": "vitals-mlp", "network": config.as_dict()},
    )


def registry_with_canary(site: RuntimeSite, storage: Path, *, canary_answers: int) -> Registered:
    from aifactory.trust.issuing.models import ensure_model_key, promote, register

    (storage / DATASET_PATH).parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(site.dataset_dir, storage / DATASET_PATH)
    key = ensure_model_key(site.runtime_dir)
    model_dir = storage / MODEL_PATH
    versions = [
        register(
            model_dir=model_dir,
            checkpoint=answering_checkpoint(storage, step=step, answer=answer, seed=seed),
            key=key,
            job={"name": "test"},
            dataset={"name": "vitals"},
        )
        for step, answer, seed in ((10, LABEL, 3), (20, canary_answers, 4))
    ]
    promote(model_dir=model_dir, digest=versions[0].digest, alias="champion", key=key, reason="test")
    promote(
        model_dir=model_dir,
        digest=versions[1].digest,
        alias="canary",
        key=key,
        reason="test",
        canary=SETTINGS,
    )
    return Registered(storage, versions[0].digest, versions[1].digest)


def wait_for_canary(server: Server, digest: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = server.call("GET", "/healthz", token=server.health_token)[1]
        if health.get("canary", {}).get("vitals-mlp") == digest:
            return
        time.sleep(0.1)
    raise AssertionError("the server never served the canary:\n" + "".join(server.output))


def ask_and_tell(server: Server, token: str, subject: int) -> dict:
    """One labelled request, then the tenant's feedback saying whether its answer was right."""
    status, answer = server.call("POST", PATH, INPUTS, token=token)
    assert status == 200, answer
    correct = answer["outputs"][0]["class"] == LABEL
    feedback = {"subject": f"patient-{subject:04d}", "outcome": {"label": LABEL, "correct": correct}}
    status, taken = server.call(
        "POST", f"/v1/decisions/{answer['decision_id']}/feedback", feedback, token=token
    )
    assert status == 202, taken
    return dict(answer, correct=correct)


def metric(server: Server, line_start: str) -> float:
    text = server.call("GET", "/metrics")[1]["text"]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


@pytest.fixture
def bad_canary(site: RuntimeSite, tmp_path: Path) -> Iterator[tuple[Server, Registered]]:
    registered = registry_with_canary(site, tmp_path / "storage", canary_answers=LABEL + 1)
    server = start_server(site, registered.storage, tmp_path / "runtime")
    try:
        wait_for_model(server)
        wait_for_canary(server, registered.canary)
        yield server, registered
    finally:
        assert server.stop() == 0


def test_a_canary_worse_than_the_champion_is_withdrawn_by_the_server_within_60_s(
    bad_canary: tuple[Server, Registered], site: RuntimeSite
) -> None:
    server, registered = bad_canary
    token = site.tokens["health"]
    answers: list[dict] = []
    first_bad: float | None = None
    record_file = rollback_path(registered.model_dir, registered.canary)
    while not record_file.exists():
        assert len(answers) < 200, "the canary was never withdrawn:\n" + "".join(server.output)
        answer = ask_and_tell(server, token, len(answers))
        answers.append(answer)
        if not answer["correct"] and first_bad is None:
            first_bad = time.monotonic()
    assert first_bad is not None
    withdrawn_after = time.monotonic() - first_bad
    assert withdrawn_after < 60, f"withdrawn {withdrawn_after:.1f} s after the first bad answer"
    # Both versions answered while the canary ran; only the canary answered wrongly.
    by_digest = {a["digest"] for a in answers}
    assert by_digest == {registered.champion, registered.canary}
    assert all(a["correct"] == (a["digest"] == registered.champion) for a in answers)

    # The champion answers everything afterwards, and the server says no canary runs.
    after = [server.call("POST", PATH, INPUTS, token=token)[1] for _ in range(30)]
    assert {a["digest"] for a in after} == {registered.champion}
    health = server.call("GET", "/healthz", token=server.health_token)[1]
    assert "canary" not in health
    assert health["models"]["vitals-mlp"]["digest"] == registered.champion

    # Each decision's record names the version that answered it, and its role.
    logged = records(server)
    for answer in answers:
        request = logged[answer["decision_id"]]["request"]
        role = "champion" if answer["digest"] == registered.champion else "canary"
        assert (request["model_digest"], request["model_role"]) == (answer["digest"], role)
    for answer in after:
        assert logged[answer["decision_id"]]["request"]["model_digest"] == registered.champion
    # Every field the audit's record-keeping table names for these records is in what this server wrote.
    written = set().union(*(field_paths(r) for r in logged.values()))
    named = {m.field for m in DECISION_RECORD_FIELDS if m.written in (EVERY, INFERENCE, CANARY, FEEDBACK)}
    assert named <= written, named - written

    # The record: signed by the node's log key, verified as the control host would.
    signers = [server.runtime_dir / "log-key" / "allowed_signers"]
    record = verify_rollback(registered.model_dir, registered.canary, signers)
    assert record is not None
    canary_answers = [a for a in answers if a["digest"] == registered.canary]
    assert (record["canary"], record["champion"], record["reason"]) == (
        registered.canary,
        registered.champion,
        "error-rate-above-champion",
    )
    assert record["canary_requests"] == len(canary_answers) >= SETTINGS.min_requests
    assert record["canary_error_rate"] > record["champion_error_rate"] + SETTINGS.error_margin
    assert record["champion_errors"] == 0 and record["settings"] == SETTINGS.as_dict()
    # Counted per role in /metrics.
    assert (
        metric(server, 'aifactory_serve_role_errors_total{kind="feedback",model="vitals-mlp",role="canary"}')
        > 0
    )
    assert (
        metric(
            server, 'aifactory_serve_role_errors_total{kind="feedback",model="vitals-mlp",role="champion"}'
        )
        == 0
    )
    assert metric(server, 'aifactory_serve_canary_rollbacks_total{model="vitals-mlp"}') == 1

    # Tampering: a lower rate written into the record no longer verifies.
    tampered = json.loads(record_file.read_text())
    tampered["canary_error_rate"] = 0.0
    record_file.write_text(json.dumps(tampered))
    with pytest.raises(ModelRegistryError) as refused:
        verify_rollback(registered.model_dir, registered.canary, signers)
    assert refused.value.code == "bad-canary-rollback"
    # ... nor does a record signed by a key the node's trust file does not name.
    record_file.write_text(json.dumps(record))
    other = site.runtime_dir / "token-key" / "allowed_signers"
    with pytest.raises(ModelRegistryError):
        verify_rollback(registered.model_dir, registered.canary, [other])


def test_a_canary_as_good_as_the_champion_holds_and_the_loop_promotes_it(
    site: RuntimeSite, tmp_path: Path
) -> None:
    from aifactory.loop.canary import canary_state
    from aifactory.trust.issuing.models import ensure_model_key

    registered = registry_with_canary(site, tmp_path / "storage", canary_answers=LABEL)
    server = start_server(site, registered.storage, tmp_path / "runtime")
    try:
        wait_for_model(server)
        wait_for_canary(server, registered.canary)
        answers = [ask_and_tell(server, site.tokens["health"], n) for n in range(40)]
        health = server.call("GET", "/healthz", token=server.health_token)[1]
    finally:
        assert server.stop() == 0
    assert {a["digest"] for a in answers} == {registered.champion, registered.canary}
    assert all(a["correct"] for a in answers)
    assert health["canary"] == {"vitals-mlp": registered.canary}
    assert not rollback_path(registered.model_dir, registered.canary).exists()

    key = ensure_model_key(site.runtime_dir)
    promoted = read_promotions(Registry(registered.model_dir), key.trust).alias("canary")
    assert promoted is not None
    signers = [server.runtime_dir / "log-key" / "allowed_signers"]
    hold = timedelta(minutes=30)

    def state(after: timedelta) -> str:
        from datetime import datetime

        since = datetime.fromisoformat(promoted.time.replace("Z", "+00:00"))
        return canary_state(
            model_dir=registered.model_dir,
            digest=registered.canary,
            trust=key.trust,
            signers=signers,
            hold=hold,
            now=since + after,
        ).state

    assert state(timedelta(minutes=29)) == "running"
    assert state(hold) == "held"
