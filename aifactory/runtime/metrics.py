"""Metrics: per-step JSON lines and Prometheus text files for training, counters for the server.

The Prometheus text file is rewritten atomically (temp + rename) so node_exporter's textfile
collector never reads half of it. No torch here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aifactory.runtime.files import atomic_write


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items())
    )
    return "{" + inner + "}"


class TrainingMetrics:
    """Rank 0 writes one JSON line per step and refreshes the Prometheus file."""

    def __init__(self, jsonl: Path, prometheus: Path, *, job: str) -> None:
        self.jsonl = jsonl
        self.prometheus = prometheus
        self.job = job
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        self._handle = jsonl.open("a", encoding="utf-8")

    def step(self, values: Mapping[str, Any]) -> None:
        self._handle.write(json.dumps({"job": self.job, **values}, sort_keys=True) + "\n")
        self._handle.flush()
        labels = _labels({"job": self.job})
        lines = []
        for name, help_text, key in (
            ("aifactory_train_step", "Last completed training step.", "step"),
            ("aifactory_train_loss", "Training loss at the last step (mean over processes).", "loss"),
            ("aifactory_train_samples_per_second", "Samples per second over all processes.", "samples_per_s"),
            ("aifactory_train_world_size", "Processes in the job.", "world_size"),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name}{labels} {values[key]}"]
        atomic_write(self.prometheus, ("\n".join(lines) + "\n").encode(), durable=False)

    def close(self) -> None:
        self._handle.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Registry:
    """Counters and histograms for the server; thread-safe; rendered as Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._gauges: dict[str, float] = {}
        self._histograms: dict[str, tuple[tuple[float, ...], list[int], list[float]]] = {}
        self._help: dict[str, tuple[str, str]] = {}

    def counter(self, name: str, help_text: str) -> None:
        self._help[name] = ("counter", help_text)

    def gauge(self, name: str, help_text: str) -> None:
        self._help[name] = ("gauge", help_text)

    def histogram(self, name: str, help_text: str, buckets: Iterable[float]) -> None:
        bounds = tuple(sorted(buckets))
        self._help[name] = ("histogram", help_text)
        self._histograms[name] = (bounds, [0] * (len(bounds) + 1), [0.0, 0.0])

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + amount

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self._gauges[name] = value

    def observe(self, name: str, value: float) -> None:
        bounds, counts, totals = self._histograms[name]
        index = next((i for i, bound in enumerate(bounds) if value <= bound), len(bounds))
        with self._lock:
            counts[index] += 1
            totals[0] += value
            totals[1] += 1

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            if name in self._histograms:
                return self._histograms[name][2][0]
            return self._counters.get((name, tuple(sorted(labels.items()))), self._gauges.get(name, 0.0))

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, (kind, help_text) in sorted(self._help.items()):
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                if kind == "counter":
                    series = sorted((k[1], v) for k, v in self._counters.items() if k[0] == name)
                    lines += [f"{name}{_labels(dict(labels))} {value:g}" for labels, value in series] or [
                        f"{name} 0"
                    ]
                elif kind == "gauge":
                    lines.append(f"{name} {self._gauges.get(name, 0.0):g}")
                else:
                    bounds, counts, (total, count) = self._histograms[name]
                    cumulative = 0
                    for bound, bucket in zip((*bounds, float("inf")), counts, strict=True):
                        cumulative += bucket
                        le = "+Inf" if bound == float("inf") else f"{bound:g}"
                        lines.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
                    lines += [f"{name}_sum {total:g}", f"{name}_count {int(count)}"]
        return "\n".join(lines) + "\n"
