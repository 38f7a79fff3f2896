"""The server's per-batch program (`model.scorer`): the traced network gives the eager network's
scores for any batch size, and a network that cannot be traced still serves (eagerly)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from aifactory.runtime.model import ModelConfig, build, scorer  # noqa: E402

CONFIG = ModelConfig(features=8, classes=3, hidden=16, layers=2)


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_traced_scores_equal_the_networks_for_any_batch_size(rows: int) -> None:
    network = build(CONFIG, seed=3)
    scores = scorer(network)
    assert isinstance(scores, torch.jit.ScriptModule)
    inputs = torch.randn(rows, CONFIG.features, generator=torch.Generator().manual_seed(rows))
    with torch.inference_mode():
        expected = torch.softmax(network(inputs), dim=1)
        got = scores(inputs)
    assert got.shape == (rows, CONFIG.classes)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_network_that_cannot_be_traced_is_served_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("tracing is not supported here")

    monkeypatch.setattr(torch.jit, "trace", refuse)  # a stand-in for a network TorchScript cannot take
    network = build(CONFIG, seed=3)
    scores = scorer(network)
    assert not isinstance(scores, torch.jit.ScriptModule)
    inputs = torch.randn(5, CONFIG.features)
    with torch.inference_mode():
        torch.testing.assert_close(scores(inputs), torch.softmax(network(inputs), dim=1))
