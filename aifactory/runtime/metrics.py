"""Metrics: per-step JSON lines and Prometheus text files for training, the server's Prometheus metrics.

The Prometheus text file is rewritten atomically (temp + rename) so node_exporter's textfile
collector never reads half of it. No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from aifactory.durable import atomic_write


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


# The model or tenant label of a decision about no planned model, or by no planned tenant (an
# unidentified caller, a name from a request path): one bounded value instead of the text it came with.
UNPLANNED = "-"


class ServeMetrics:
    """The inference server's metrics, exposed by `prometheus_client` (with the process's own).

    The names are the server's documented ones (docs/runtime.md); counters get `_total` from the
    library. The `_created` series are off: they add a line per series and nothing reads them.
    Decisions are counted by model and tenant (docs/economics.md), both from the plan (`models`,
    `tenants`): any other value is counted as `UNPLANNED`, so the series are bounded by the plan.
    """

    def __init__(
        self, *, models: Iterable[str] = (), tenants: Iterable[str] = (), served: Iterable[str] = ()
    ) -> None:
        self._models = frozenset(models)
        self._tenants = frozenset(tenants)
        served = tuple(served)
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        registry = self.registry
        self.requests = Counter(
            "aifactory_serve_requests", "HTTP requests answered, by status code.", ["code"], registry=registry
        )
        self.decisions = Counter(
            "aifactory_serve_decisions",
            "Authorization decisions recorded, by model, tenant (from the plan, else '-') and outcome.",
            ["model", "tenant", "allow"],
            registry=registry,
        )
        self._by_decision: dict[tuple[str, str, bool], Any] = {}
        # Every (model served here, tenant, outcome) starts at 0: a series Prometheus first sees at
        # its value N hides those N decisions from increase() and rate(), so the first decisions of
        # a tenant would never reach the per-decision figures (docs/economics.md).
        for model in served:
            for tenant in (*sorted(self._tenants), UNPLANNED):
                for allow in (True, False):
                    self._child(model, tenant, allow)
        self.decisions_unrecorded = Counter(
            "aifactory_serve_decisions_unrecorded",
            "Requests answered 503 log-unavailable: their decision could not be made durable.",
            registry=registry,
        )
        self.batch_size = Histogram(
            "aifactory_serve_batch_size",
            "Rows per forward pass formed by the batcher.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.forward_seconds = Histogram(
            "aifactory_serve_forward_seconds",
            "Wall-clock time of one batched forward pass (softmax included).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=registry,
        )
        self.request_seconds = Histogram(
            "aifactory_serve_request_seconds",
            "Time from a request's first byte to its answer.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.tls_refused = Counter(
            "aifactory_serve_tls_refused",
            "TLS handshakes refused (e.g. a client certificate), by reason.",
            ["reason"],
            registry=registry,
        )
        self.http_closed = Counter(
            "aifactory_serve_http_closed",
            "Connections the HTTP layer refused or closed, by reason (caps, timeouts, bad requests).",
            ["reason"],
            registry=registry,
        )
        self.feedback = Counter(
            "aifactory_serve_feedback",
            "Feedback on past decisions, by result (accepted, or the reason code it was refused with).",
            ["result"],
            registry=registry,
        )
        self.receipts_unwritten = Counter(
            "aifactory_serve_receipts_unwritten",
            "Allowed decisions whose receipt could not be written to the site storage (no feedback on them).",
            registry=registry,
        )
        self.rate_limited = Counter(
            "aifactory_serve_rate_limited",
            "Requests answered 429 because their peer (or all peers) had too many denials in the window.",
            registry=registry,
        )
        self.model_step = Gauge(
            "aifactory_serve_model_step", "Training step of the checkpoint being served.", registry=registry
        )
        self.models_refused = Gauge(
            "aifactory_serve_models_refused",
            "Things in a model's folder the server refuses to load now (unsigned, bad-signature, "
            "not-promoted, bad-promotion, no-model-trust), by model and reason.",
            ["model", "reason"],
            registry=registry,
        )
        self.model_refusals = Counter(
            "aifactory_serve_model_refusals",
            "Refusals logged since the server started (each thing and reason once), by model and reason.",
            ["model", "reason"],
            registry=registry,
        )
        self.model_info = Gauge(
            "aifactory_serve_model_info",
            "1 for the model version being served: its name, registry digest and alias.",
            ["model", "digest", "alias"],
            registry=registry,
        )
        # The canary (docs/loop.md): requests answered and errors (failed inference, feedback marking a
        # decision wrong) per model and role, the role being `champion` or `canary`.
        self.role_requests = Counter(
            "aifactory_serve_role_requests",
            "Inference requests answered by a model version, by model and role (champion, canary).",
            ["model", "role"],
            registry=registry,
        )
        self.role_errors = Counter(
            "aifactory_serve_role_errors",
            "Errors of a model version by model, role and kind (inference: failed on this server; "
            "feedback: a decision it answered marked wrong).",
            ["model", "role", "kind"],
            registry=registry,
        )
        self.canary_rollbacks = Counter(
            "aifactory_serve_canary_rollbacks",
            "Canaries this server withdrew by itself (error rate past the champion's), by model.",
            ["model"],
            registry=registry,
        )
        self.inflight = Gauge(
            "aifactory_serve_inflight_requests", "Requests being answered.", registry=registry
        )
        self.connections = Gauge("aifactory_serve_connections", "Open client connections.", registry=registry)
        self.log_disk_free = Gauge(
            "aifactory_serve_log_disk_free_ratio",
            "Free space on the decision log's file system (0-1).",
            registry=registry,
        )
        self.log_disk_state = Gauge(
            "aifactory_serve_log_disk_state",
            "Decision log disk: 0 ok, 1 low (warning), 2 critical (shedding new requests).",
            registry=registry,
        )
        self._by_code: dict[int, Any] = {}

    def answered(self, status: int, seconds: float) -> None:
        """One HTTP answer (the HTTP layer's `HttpEvents`)."""
        child = self._by_code.get(status)
        if child is None:
            child = self._by_code[status] = self.requests.labels(code=str(status))
        child.inc()
        self.request_seconds.observe(seconds)

    def decided(self, *, model: str | None, tenant: str | None, allow: bool) -> None:
        """One recorded decision. The counter's child is looked up once per (model, tenant, outcome):
        this runs for every request, and `labels()` costs a lock and a tuple of strings each time."""
        # The key is the bounded labels, never the raw names: a name from a request path must not
        # grow this cache either.
        self._child(
            model if model in self._models else UNPLANNED,
            tenant if tenant in self._tenants else UNPLANNED,
            allow,
        ).inc()

    def _child(self, model: str, tenant: str, allow: bool) -> Any:  # noqa: ANN401 - prometheus_client's child
        key = (model, tenant, allow)
        child = self._by_decision.get(key)
        if child is None:
            child = self._by_decision[key] = self.decisions.labels(
                model=model, tenant=tenant, allow="true" if allow else "false"
            )
        return child

    def closed(self, reason: str) -> None:
        self.http_closed.labels(reason=reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


CONTENT_TYPE = CONTENT_TYPE_LATEST
