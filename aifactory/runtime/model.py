"""The model the runtime ships: a small, real MLP classifier (torch).

Its shape is a `ModelConfig`, stored in every checkpoint so a server rebuilds the same network.
`scorer` turns a trained network into what the inference server runs per batch.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)
Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ModelConfig:
    features: int = 16
    classes: int = 4
    hidden: int = 64
    layers: int = 2  # hidden layers

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "mlp", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(
            features=int(data["features"]),
            classes=int(data["classes"]),
            hidden=int(data["hidden"]),
            layers=int(data["layers"]),
        )


class MLP(nn.Module):
    """Linear -> LayerNorm -> GELU, `layers` times, then a linear head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        blocks: list[nn.Module] = []
        width = config.features
        for _ in range(config.layers):
            blocks += [nn.Linear(width, config.hidden), nn.LayerNorm(config.hidden), nn.GELU()]
            width = config.hidden
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, config.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores: torch.Tensor = self.head(self.body(x))  # nn.Module.__call__ is typed as returning Any
        return scores


def build(config: ModelConfig, *, seed: int) -> MLP:
    """The same seed gives the same initial weights on every process and every run."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = MLP(config)
    torch.random.set_rng_state(generator_state)
    return model


class _Scores(nn.Module):
    """The network followed by softmax: class probabilities per row."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(x), dim=1)


def scorer(network: MLP) -> Scorer:
    """Class probabilities for a batch, as one frozen TorchScript call (the server's forward pass).

    Why not the eager module: each eager op re-takes Python's GIL when it returns, and in a server
    whose event loop holds the GIL most of the time each re-take waits up to the interpreter's
    switch interval (measured here: a batch-32 forward took 27 ms in the server against 19 ms
    alone). A TorchScript call runs every op in C++ with the GIL released. Tracing records no
    batch size (the network has no shape-dependent Python), and the traced program is checked
    against the eager one on a probe batch; if tracing fails, the eager module serves (slower).

    TorchScript is deprecated in torch 2.13 (its successors, torch.compile and AOTInductor, need a
    C++ compiler on the node, which an air-gapped GPU node need not have). When a later torch drops
    tracing, the fallback keeps serving.
    """
    scores = _Scores(network).eval()  # the network too
    probe = torch.linspace(-1, 1, 3 * network.config.features).reshape(3, network.config.features)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # chosen knowingly: see above
            untyped = torch.jit.trace(scores, probe, check_trace=False)  # type: ignore[no-untyped-call]  # torch leaves trace unannotated
            traced: Scorer = torch.jit.freeze(untyped)  # a frozen ScriptModule: tensor in, scores out
            if not torch.allclose(traced(probe), scores(probe), rtol=1e-5, atol=1e-6):
                raise RuntimeError("the traced program's scores differ from the network's")
    except RuntimeError as exc:
        log.warning("serving the eager network (tracing failed: %s)", exc)
        return scores
    return traced
