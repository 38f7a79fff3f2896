"""The loop turn's canary step (issue 30) on a real registry: a challenger the policy allowed becomes
the registry's `canary` (its settings, from the plan with defaults, signed into the record); the turn
waits while it runs, promotes it to champion once it held for the loop's duration, and refuses it
(`canary-regressed`) when a server withdrew it with a rollback record that verifies against a serving
node's log key. A record that does not verify stops the turn with an error and promotes nothing.

The rollback records are written by the server's own function with a real decision-log key (the
server side is tested end to end in tests/runtime/test_canary.py); no training runs here: the turn
starts at its canary step with the register and decide steps filled in as they leave them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytest.importorskip("torch")

from aifactory.errors import ModelRegistryError  # noqa: E402
from aifactory.loop.turn import Places, Turn, TurnSetup, step_canary, step_promote  # noqa: E402
from aifactory.plan.model import SitePlan  # noqa: E402
from aifactory.policy import RuntimeAuthorizer  # noqa: E402
from aifactory.trust.canary import RoleCounts, rollback_path, write_rollback  # noqa: E402
from aifactory.trust.decisionlog import DecisionLog, log_key_dir  # noqa: E402
from aifactory.trust.issuing.models import ensure_model_key, promote, register  # noqa: E402
from aifactory.trust.models import Registry, read_promotions  # noqa: E402

from .local_jobs import LocalJobs  # noqa: E402

MODEL = "vitals-mlp"
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@dataclass
class Canary:
    setup: TurnSetup
    turn: Turn
    champion: str
    challenger: str
    node_log: Path  # a serving node's decision log: its key signs rollback records

    def at(self, when: datetime) -> Canary:
        self.setup.now = lambda: when
        return self

    def aliases(self) -> dict[str, str | None]:
        log = read_promotions(Registry(self.setup.model_dir), self.setup.key.trust)
        return {alias: (p.digest if (p := log.alias(alias)) else None) for alias in ("champion", "canary")}

    def withdraw(self, key_dir: Path | None = None) -> dict[str, object]:
        """What a server writes when it withdraws the canary."""
        return write_rollback(
            model_dir=self.setup.model_dir,
            model=MODEL,
            canary=self.challenger,
            champion=self.champion,
            canary_counts=RoleCounts(requests=20, errors=9),
            champion_counts=RoleCounts(requests=180, errors=2),
            settings=_settings(self),
            host="looplab-cpu-001",
            key_file=(key_dir or log_key_dir(self.node_log)) / "signing_key",
        )


def _settings(canary: Canary):  # noqa: ANN202 -- the settings the canary's record carries
    from aifactory.trust.canary import CanarySettings

    record = read_promotions(Registry(canary.setup.model_dir), canary.setup.key.trust).alias("canary")
    assert record is not None
    settings = CanarySettings.from_record(record.record["canary"])
    assert settings is not None
    return settings


@pytest.fixture
def canary(plan: SitePlan, tmp_path: Path) -> Canary:
    from tests.runtime.serving import save_checkpoint

    storage = tmp_path / "storage"
    key = ensure_model_key(tmp_path / "runtime")
    places = Places(plan, root=storage, node_trust=key.trust.public_key)
    model = next(m for m in plan.models if m.name == MODEL)
    model_dir = places.here(model.storage, model.path)
    digests = []
    for step, seed in ((10, 3), (20, 4)):
        checkpoint = save_checkpoint(tmp_path / "ckpt", step=step, seed=seed)
        version = register(
            model_dir=model_dir, checkpoint=checkpoint, key=key, job={"name": "t"}, dataset={"name": "vitals"}
        )
        digests.append(version.digest)
    promote(model_dir=model_dir, digest=digests[0], alias="champion", key=key, reason="first")
    node_log = tmp_path / "node" / "decisions.jsonl"
    DecisionLog(node_log).close()  # the node's log key, made as the server makes it
    setup = TurnSetup(
        plan=plan,
        model=MODEL,
        job_template=tmp_path / "job.yaml",
        key=key,
        authorizer=RuntimeAuthorizer(plan),
        jobs=LocalJobs(),
        places=places,
        state_dir=tmp_path / "loop",
        allowed_signers=tmp_path / "allowed_signers",
        node_signers=(log_key_dir(node_log) / "allowed_signers",),
        now=lambda: START,
    )
    folder = tmp_path / "loop" / MODEL / "turn-000001"
    folder.mkdir(parents=True)
    steps = {
        "register": {"challenger": digests[1], "champion": digests[0]},
        "decide": {"digest": "sha256:" + "ab" * 32, "promote": True, "reasons": []},
    }
    return Canary(setup, Turn(folder, 1, MODEL, steps=steps), digests[0], digests[1], node_log)


def test_the_challenger_serves_as_canary_then_becomes_champion_once_it_held(canary: Canary) -> None:
    loop = canary.setup.loop
    assert loop.canary is not None and loop.canary.duration_minutes == 10
    step_canary(canary.setup, canary.turn)
    assert canary.turn.status == "canary"
    assert canary.turn.steps["canary"] == {
        "digest": canary.challenger,
        "state": "running",
        "since": "2026-12-01T09:00:00Z",
    }
    assert canary.aliases() == {"champion": canary.champion, "canary": canary.challenger}
    # The plan's share, and the defaults for what the spec leaves out, signed into the record.
    assert _settings(canary).as_dict() == {
        "share": 0.1,
        "min_requests": 20,
        "window_seconds": 60,
        "error_margin": 0.05,
    }
    # Looked at again before it held: still running, and not made the canary a second time.
    step_canary(canary.at(START + timedelta(minutes=9, seconds=59)).setup, canary.turn)
    assert canary.turn.status == "canary"
    history = read_promotions(Registry(canary.setup.model_dir), canary.setup.key.trust).records
    assert [p.alias for p in history] == ["champion", "canary"]
    # Held for the loop's duration: the turn goes on and promotes it.
    step_canary(canary.at(START + timedelta(minutes=10)).setup, canary.turn)
    assert canary.turn.status == "running" and canary.turn.steps["canary"]["state"] == "held"
    step_promote(canary.setup, canary.turn)
    assert canary.turn.status == "promoted"
    assert canary.aliases()["champion"] == canary.challenger


def test_a_canary_a_server_withdrew_is_refused_as_canary_regressed(canary: Canary) -> None:
    step_canary(canary.setup, canary.turn)
    record = canary.withdraw()
    step_canary(canary.at(START + timedelta(minutes=30)).setup, canary.turn)
    assert canary.turn.status == "refused"
    found = canary.turn.steps["canary"]
    assert (found["state"], found["reasons"]) == ("regressed", ["canary-regressed"])
    assert found["rollback"] == {k: v for k, v in record.items() if k != "signature"}
    assert (found["rollback"]["canary_error_rate"], found["rollback"]["champion_error_rate"]) == (
        0.45,
        round(2 / 180, 6),
    )
    assert canary.aliases()["champion"] == canary.champion  # the champion keeps serving


def test_a_rollback_record_that_does_not_verify_stops_the_turn_and_promotes_nothing(
    canary: Canary, tmp_path: Path
) -> None:
    step_canary(canary.setup, canary.turn)
    canary.withdraw()
    path = rollback_path(canary.setup.model_dir, canary.challenger)
    edited = json.loads(path.read_text())
    edited["canary_errors"] = 0
    path.write_text(json.dumps(edited))
    later = canary.at(START + timedelta(hours=1))
    with pytest.raises(ModelRegistryError) as refused:
        step_canary(later.setup, later.turn)
    assert refused.value.code == "bad-canary-rollback"
    # Signed, but by a node key the control host does not trust.
    stranger = tmp_path / "stranger" / "decisions.jsonl"
    DecisionLog(stranger).close()
    canary.withdraw(log_key_dir(stranger))
    with pytest.raises(ModelRegistryError, match="does not verify"):
        step_canary(later.setup, later.turn)
    assert later.turn.status == "canary" and later.aliases()["champion"] == canary.champion
