"""Resuming training from a checkpoint (aifactory.runtime.train_worker.restore), with real torch on the
CPU: a training run's checkpoint brings its optimizer state back; one signed in from elsewhere with
weights only (an empty optimizer state, as `aifactory models` imports and the front door lab signs) is
trained on from its weights with a fresh optimizer instead of failing on the optimizer's fields."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from aifactory.runtime.model import ModelConfig, build  # noqa: E402
from aifactory.runtime.train_worker import restore  # noqa: E402

CONFIG = ModelConfig(features=16, classes=4, hidden=16, layers=2)


def _trained_once() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = build(CONFIG, seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    loss = model(torch.ones(2, 16)).sum()
    loss.backward()
    optimizer.step()
    return model, optimizer


def test_a_training_checkpoint_restores_weights_and_optimizer_state() -> None:
    source, source_optimizer = _trained_once()
    model = build(CONFIG, seed=9)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    restore(model, optimizer, source.state_dict(), source_optimizer.state_dict())
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert optimizer.state_dict()["state"], "the optimizer's moments came back"


def test_weights_without_optimizer_state_train_with_a_fresh_optimizer() -> None:
    source, _ = _trained_once()
    model = build(CONFIG, seed=9)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    restore(model, optimizer, source.state_dict(), {})
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert optimizer.state_dict()["state"] == {}


def test_no_checkpoint_leaves_the_new_model_as_built() -> None:
    model = build(CONFIG, seed=9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    restore(model, torch.optim.AdamW(model.parameters(), lr=0.01), None, None)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
