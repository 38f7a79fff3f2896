"""The model the runtime ships: a small, real MLP classifier (torch).

Its shape is a `ModelConfig`, stored in every checkpoint so a server rebuilds the same network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


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
        return self.head(self.body(x))


def build(config: ModelConfig, *, seed: int) -> MLP:
    """The same seed gives the same initial weights on every process and every run."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = MLP(config)
    torch.random.set_rng_state(generator_state)
    return model
