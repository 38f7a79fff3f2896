"""The inference server: JSON over HTTP/1.1 on asyncio, policy per request, dynamic batching.

    GET  /healthz                       200 {"status": "ok"} (503 "not ok" while draining); with a valid
                                        token or client certificate also site, version, models, refused
    GET  /metrics                       Prometheus text (`prometheus_client`, process metrics included); with
                                        client certificates, to Prometheus' service identity only (403)
    POST /v1/models/<name>/infer        {"inputs": [[f1, ..., fn], ...]}  with  Authorization: Bearer <token>
                                        and/or a client certificate from the site CA (mTLS)
         200 {"model", "step", "digest", "outputs": [{"class", "scores"}], "decision_id"}
         403 {"error": "forbidden", "reason", "reasons", "decision_id"}    (never the classification)
         404 {"error": "model-not-served-here", "decision_id"}      (recorded, the name cut short)
         429 {"error": "too-many-denials"}       (the peer was denied too often in this window)
         500 {"error": "inference-failed", "decision_id"}  (the forward pass raised: an error of the version)
         503 {"error": "model-not-loaded" | "log-unavailable" | "log-disk-full" | "draining"}
    POST /v1/decisions/<id>/feedback    {"dataset"?, "subject", "outcome"}  from the tenant it answered
         202 {"status": "pending", "feedback_on", "dataset", "decision_id"}   stored on the dataset's storage
         403 {"error": "forbidden", "reason", "reasons", "decision_id"}    nothing stored
         404 {"error": "decision-not-found", ...}   409 {"error": "feedback-exists", ...}   400 bad input

The wire format (parsing, limits, timeouts, connection caps) is `aifactory.runtime.http`'s; the
bounds on what hostile requests cost (denials, recorded names, JSON depth) are
`aifactory.runtime.limits`'s. This module routes, decides, batches, loads models and speaks TLS.

Per request: the caller is identified (tenant from a verified token and/or the client certificate
the TLS handshake verified, read once per connection; `aifactory.trust.certs`), the policy decides on a
fixed pool of authorization threads (each keeps its own regorus engine), and the decision is
appended to the decision log and fsync'd before any answer is written. Allowed inputs go to the
batcher thread, which collects requests up to `max_batch` rows or `max_wait_ms`, runs one forward
pass and answers each request with its rows.

The server starts healthy with no model: it watches each model's folder on the site storage and loads
the registry's champion, a version whose OpenSSF model signature verifies against the site's
model-signing key and that holds a signed promotion record (`aifactory.trust.models`). Anything else
in the folder (training checkpoints, unsigned, badly signed or unpromoted versions) is refused: logged
once, counted in /metrics and listed in /healthz; the champion already loaded keeps serving. A
registry `canary` (docs/loop.md) is loaded beside the champion and answers its share of the requests,
chosen by decision id before the decision is recorded; the server withdraws it by itself when its
error rate passes the champion's (`aifactory.runtime.canary`) and writes a signed rollback record.
SIGTERM/SIGINT drain: stop accepting, finish every request in flight, answer one last request on each
keep-alive connection (with `Connection: close`, for up to two seconds), sign the log's final head, exit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import logging
import queue
import signal
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import aifactory
from aifactory.data.feedback import (
    FeedbackRequest,
    Receipt,
    find_receipt,
    forget_receipt,
    parse_feedback,
    store_feedback,
    valid_decision_id,
    write_receipt,
)
from aifactory.errors import AifactoryError, FeedbackError, TokenRejected
from aifactory.ids import new_decision_id
from aifactory.plan.model import Host
from aifactory.runtime import checkpoint
from aifactory.runtime.canary import CanaryWatch, is_negative
from aifactory.runtime.cpus import CpuSplit
from aifactory.runtime.handoff import LoopInbox, LoopOutbox, Workers
from aifactory.runtime.http import HttpLimits, HttpServer, Listener, Request, Response
from aifactory.runtime.limits import (
    MAX_JSON_DEPTH,
    DenialLimiter,
    Suppressed,
    nests_deeper_than,
    recorded_name,
)
from aifactory.runtime.metrics import CONTENT_TYPE, ServeMetrics
from aifactory.runtime.model import MLP, ModelConfig, Scorer, scorer
from aifactory.runtime.siteplan import RuntimePlan
from aifactory.trust.authz import Authorizer, Guard, Outcome
from aifactory.trust.canary import CanarySettings, rolled_back, takes_canary, write_rollback
from aifactory.trust.certs import PROMETHEUS_SERVICE, PeerCertificate, read_peer_certificate
from aifactory.trust.decisionlog import (
    DEFAULT_RETENTION_DAYS,
    DISK_SHED_FREE,
    DISK_WARN_FREE,
    DecisionLog,
    log_key_dir,
)
from aifactory.trust.models import Inspection, Inspector, ModelTrust, ModelVersion, Refusal
from aifactory.trust.tokens import TokenVerifier, TrustFiles, file_version

log = logging.getLogger(__name__)
MAX_ROWS = 1024
LOG_DISK_STATES = {"ok": 0.0, "low": 1.0, "critical": 2.0}  # aifactory_serve_log_disk_state


@dataclass(frozen=True)
class ServerConfig:
    plan_path: Path
    runtime_dir: Path
    models: tuple[str, ...] = ()  # empty: every model the plan lets this host's pool serve
    host_name: str | None = None
    listen: str = "127.0.0.1"
    port: int = 8600
    storage_root: Path | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    authz_threads: int = 2  # 0: decide on the event loop thread
    torch_threads: int = 1
    cpu_split: CpuSplit | None = None  # None: the OS places the forward pass (`runtime.cpus`)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # client certificates from this CA (the site CA) identify tenants
    tls_client_auth: str = "required"  # or "optional": a client may come with a token alone
    sign_every: int = 100
    sign_interval: float = 5.0
    head_copies: tuple[Path, ...] = ()
    log_rotate_bytes: int | None = None  # rotate the decision log into segments at this size
    log_retention_days: int = DEFAULT_RETENTION_DAYS
    log_disk_warn_free: float = DISK_WARN_FREE  # below this free fraction: warn (log, metric)
    log_disk_shed_free: float = DISK_SHED_FREE  # below this: shed new requests (503 log-disk-full)
    reload_interval: float = 2.0
    drain_timeout: float = 30.0
    trust_recheck_interval: float = 0.5  # a revocation takes effect within this many seconds
    tls_handshake_timeout: float = 10.0
    http: HttpLimits = field(default_factory=HttpLimits)  # sizes, timeouts, connection caps
    denials_per_peer: int = 20  # recorded denials per peer and window, then 429 (`runtime.limits`)
    denials_total: int = 1000  # ... and for all peers together
    denial_window: float = 10.0
    feedback: bool = (
        True  # receipts of allowed decisions and POST .../feedback (docs/data.md); a site-wide choice
    )
    # The front door's listener (docs/runtime.md, "Front door"): connections from these addresses only,
    # each opening with a PROXY v2 header whose client address is the peer. None: no such listener.
    front_door_port: int | None = None
    front_door_addresses: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection: its address and the client certificate TLS verified."""

    address: str
    certificate: PeerCertificate | None = None


@dataclass
class LoadedModel:
    name: str
    step: int
    scores: Scorer  # rows -> class probabilities, one batched call (`model.scorer`)
    features: int
    path: str
    digest: str  # the registry version's digest (`sha256:<hex>`): every decision on it records it
    alias: str = "champion"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "step": self.step,
            "features": self.features,
            "checkpoint": self.path,
            "digest": self.digest,
            "alias": self.alias,
        }


@dataclass
class _Work:
    rows: np.ndarray
    done: Callable[[Any, BaseException | None], None]
    model: LoadedModel = field(init=False)


class Batcher:
    """One thread: collect requests up to max_batch rows or max_wait, run one forward pass, answer each."""

    def __init__(
        self, *, max_batch: int, max_wait: float, metrics: ServeMetrics, cpus: CpuSplit | None = None
    ) -> None:
        self.max_batch, self.max_wait, self.metrics = max_batch, max_wait, metrics
        self.cpus = cpus
        self.model: LoadedModel | None = None
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._thread.start()

    def submit(self, rows: np.ndarray, done: Callable[[Any, BaseException | None], None]) -> None:
        self._queue.put(_Work(rows, done))

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _collect(self, first: _Work) -> tuple[list[_Work], bool]:
        batch, rows = [first], len(first.rows)
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            rows += len(item.rows)
        return batch, False

    def _run(self) -> None:
        if self.cpus is not None:
            self.cpus.move_to_forward()
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch, stopping = self._collect(first)
            self._forward(batch)

    def _forward(self, batch: list[_Work]) -> None:
        model = self.model
        if model is None:
            for work in batch:
                work.done(None, LookupError("model-not-loaded"))
            return
        counts = [len(work.rows) for work in batch]
        began = time.perf_counter()
        try:
            with torch.inference_mode():
                scores = model.scores(torch.from_numpy(np.concatenate([w.rows for w in batch]))).numpy()
        except (RuntimeError, ValueError) as exc:
            for work in batch:
                work.done(None, exc)
            return
        self.metrics.forward_seconds.observe(time.perf_counter() - began)
        self.metrics.batch_size.observe(float(sum(counts)))
        start = 0
        for work, count in zip(batch, counts, strict=True):
            work.done((model, scores[start : start + count]), None)
            start += count


@dataclass
class ModelSlot:
    """One model this server may serve: its registry's inspector, its own batcher, what it refuses."""

    name: str
    inspector: Inspector
    batcher: Batcher
    loaded_digest: str | None = None
    refused: tuple[Refusal, ...] = ()
    # The canary (docs/loop.md): its own batcher, kept while requests routed to it finish; `watch`
    # is set while it takes traffic and None once withdrawn (then the champion answers everything).
    canary_batcher: Batcher | None = None
    watch: CanaryWatch | None = None
    withdrawn: set[str] = field(default_factory=set)  # canaries this server withdrew

    def route(self, decision_id: str) -> tuple[LoadedModel | None, Batcher, str | None]:
        """Who answers this decision: (model, its batcher, role); role None when no canary runs."""
        watch, canary = self.watch, self.canary_batcher
        if watch is None or canary is None or canary.model is None:
            return self.batcher.model, self.batcher, None
        if takes_canary(decision_id, watch.settings.share):
            return canary.model, canary, "canary"
        return self.batcher.model, self.batcher, "champion"


class InferenceServer:
    def __init__(self, config: ServerConfig, *, authorizer: Authorizer) -> None:
        self.config = config
        # Before the server's threads start: they inherit "off the forward CPUs".
        if config.cpu_split is not None:
            config.cpu_split.keep_others_off_forward()
        self.plan = RuntimePlan.load(config.plan_path, storage_root=config.storage_root)
        host = self.plan.this_host(config.host_name)
        self.metrics = ServeMetrics(
            models=(m.name for m in self.plan.plan.models),
            tenants=(t.name for t in self.plan.plan.tenants),
            served=(m.name for m in self.plan.plan.models if host and host.pool in m.serve_on),
        )
        self.decisions = DecisionLog(
            config.runtime_dir / "decisions.jsonl",
            sign_every=config.sign_every,
            sign_interval=config.sign_interval,
            head_copies=config.head_copies,
            rotate_bytes=config.log_rotate_bytes,
            retention_days=config.log_retention_days,
            disk_warn_free=config.log_disk_warn_free,
            disk_shed_free=config.log_disk_shed_free,
        )
        verifier = TokenVerifier(
            TrustFiles(config.runtime_dir),
            site=self.plan.site,
            recheck_interval=config.trust_recheck_interval,
        )
        self.guard = Guard(
            verifier=verifier,
            authorizer=authorizer,
            decisions=self.decisions,
            component="serve",
            host=host.name if host else None,
            host_country=host.country if host else None,
        )
        # Each authorization thread keeps its own policy engine, compiled when the thread starts; with
        # authz_threads=0 the event loop's thread decides (no thread hop; one engine).
        self.authz_workers = (
            Workers(config.authz_threads, name="authz", initializer=self._warm_engine)
            if config.authz_threads
            else None
        )
        self._inbox: LoopInbox | None = None  # set when the event loop runs
        self._authz_outbox: LoopOutbox | None = None
        self.slots = {
            name: ModelSlot(
                name,
                Inspector(self.plan.model_dir(name), ModelTrust.in_runtime_dir(config.runtime_dir)),
                Batcher(
                    max_batch=config.max_batch,
                    max_wait=config.max_wait_ms / 1000,
                    metrics=self.metrics,
                    cpus=config.cpu_split,
                ),
            )
            for name in _models_to_serve(self.plan, config.models, host)
        }
        # Where receipts of decisions live: every mounted model's folder, whichever node serves it.
        self._receipt_dirs = [self.plan.model_dir(m.name) for m in self.plan.plan.models if m.host_path]
        self.draining = False
        self.http: HttpServer[Peer] = HttpServer(
            handler=self._route, prepare=self._prepare, limits=config.http, events=self.metrics
        )
        self.denials = DenialLimiter(
            per_peer=config.denials_per_peer, total=config.denials_total, window=config.denial_window
        )
        self._tls_context: ssl.SSLContext | None = None
        self._tls_versions: tuple[tuple[int, int] | None, ...] = ()  # of the files _tls loaded
        self._tls_checked_at = float("-inf")
        self._loop: asyncio.AbstractEventLoop | None = None  # set by run_server, for request_stop
        self.bound_port: int | None = None
        self.front_door_port: int | None = None  # the front door's listener, when configured
        self._request_prefix = uuid.uuid4().hex[:8]  # this server run; numbers count its requests
        self._request_numbers = itertools.count(1)

    def _warm_engine(self) -> None:
        """Compile this thread's policy engine now, not on its first request (that one would wait)."""
        self.guard.authorizer.decide("-", "infer", "model/-", host_country=self.guard.host_country)

    # --- model --------------------------------------------------------------------------------------

    def reload_model(self, slot: ModelSlot) -> bool:
        """Load the registry's champion when it changed; True when a new model is live. Only a version
        that verifies and is promoted loads; a champion that stops verifying is refused, but the one in
        memory (verified when it loaded) keeps serving."""
        inspection = slot.inspector.inspect()
        self._report_refusals(slot, inspection)
        champion = inspection.champion
        changed = champion is not None and champion.digest != slot.loaded_digest
        if champion is not None and changed:
            loaded = _load_version(slot.name, champion, "champion")
            previous = slot.batcher.model
            slot.batcher.model = loaded
            slot.loaded_digest = champion.digest
            if previous is not None:
                self.metrics.model_info.remove(previous.name, previous.digest, previous.alias)
            self.metrics.model_info.labels(model=slot.name, digest=champion.digest, alias="champion").set(1.0)
            self.metrics.model_step.set(float(loaded.step))
            log.warning("serving %s champion %s from %s", slot.name, champion.digest, loaded.path)
        self._reload_canary(slot, inspection)
        return changed

    def _reload_canary(self, slot: ModelSlot, inspection: Inspection) -> None:
        """Serve the registry's canary beside the champion, or stop: a canary that is the champion now
        (promoted), was withdrawn (here, or by another server: its rollback file), or carries no valid
        settings takes no traffic."""
        promotion = inspection.promotions.alias("canary")
        version = inspection.canary
        settings = CanarySettings.from_record(promotion.record.get("canary")) if promotion else None
        model_dir = slot.inspector.registry.model_dir
        if (
            version is None
            or settings is None
            or slot.batcher.model is None
            or version.digest == slot.loaded_digest
            or version.digest in slot.withdrawn
            or rolled_back(model_dir, version.digest)
        ):
            if slot.watch is not None:
                log.warning("%s canary %s takes no more traffic", slot.name, slot.watch.canary)
                self._stop_canary(slot)
            return
        watch = slot.watch
        if watch is not None and (watch.canary, watch.champion) == (version.digest, slot.loaded_digest):
            return  # the same pair: judged on; a new champion starts a new comparison
        loaded = _load_version(slot.name, version, "canary")
        if slot.canary_batcher is None:
            slot.canary_batcher = Batcher(
                max_batch=self.config.max_batch,
                max_wait=self.config.max_wait_ms / 1000,
                metrics=self.metrics,
                cpus=self.config.cpu_split,
            )
        self._stop_canary(slot)
        slot.canary_batcher.model = loaded
        slot.watch = CanaryWatch(settings, champion=slot.batcher.model.digest, canary=version.digest)
        self.metrics.model_info.labels(model=slot.name, digest=version.digest, alias="canary").set(1.0)
        log.warning(
            "serving %s canary %s beside champion %s for a share of %s of the requests",
            slot.name,
            version.digest,
            slot.batcher.model.digest,
            settings.share,
        )

    def _stop_canary(self, slot: ModelSlot) -> None:
        """No more traffic to the canary; requests already routed to it finish on its batcher."""
        watch, slot.watch = slot.watch, None
        if watch is not None:
            self.metrics.model_info.remove(slot.name, watch.canary, "canary")

    def _count(self, slot: ModelSlot, role: str, *, error: bool = False, wrong: bool = False) -> None:
        """A request answered (or failed) by `role`, or feedback marking one wrong; then the canary is
        judged, and withdrawn at once when it regressed."""
        watch = slot.watch
        if not wrong:
            self.metrics.role_requests.labels(model=slot.name, role=role).inc()
        if error or wrong:
            kind = "feedback" if wrong else "inference"
            self.metrics.role_errors.labels(model=slot.name, role=role, kind=kind).inc()
        if watch is None:
            return
        if wrong:
            watch.marked_wrong(role)
        else:
            watch.answered(role, error=error)
        counts = watch.regressed()
        if counts is None or slot.watch is not watch:
            return
        slot.withdrawn.add(watch.canary)
        self._stop_canary(slot)  # traffic is back on the champion before the record is written
        self.metrics.canary_rollbacks.labels(model=slot.name).inc()
        log.error(
            "withdrew %s canary %s: error rate %.3f over %d requests, champion %.3f over %d",
            slot.name,
            watch.canary,
            counts["canary"].rate,
            counts["canary"].requests,
            counts["champion"].rate,
            counts["champion"].requests,
        )
        try:
            write_rollback(
                model_dir=slot.inspector.registry.model_dir,
                model=slot.name,
                canary=watch.canary,
                champion=watch.champion,
                canary_counts=counts["canary"],
                champion_counts=counts["champion"],
                settings=watch.settings,
                host=self.guard.host,
                key_file=log_key_dir(self.decisions.path) / "signing_key",
            )
        except (OSError, AifactoryError) as exc:  # withdrawn here all the same; the turn sees no record
            log.error("the rollback record of %s canary %s was not written: %r", slot.name, watch.canary, exc)

    def _report_refusals(self, slot: ModelSlot, inspection: Inspection) -> None:
        """Log each refused thing once (and again if its reason changes); count them for /metrics."""
        before = {(r.path, r.reason) for r in slot.refused}
        for refusal in inspection.refused:
            if (refusal.path, refusal.reason) not in before:
                log.error(
                    "refused to load %s/%s: %s (%s)", slot.name, refusal.path, refusal.reason, refusal.detail
                )
                self.metrics.model_refusals.labels(model=slot.name, reason=refusal.reason).inc()
        reasons = {r.reason for r in (*slot.refused, *inspection.refused)}
        for reason in reasons:
            count = sum(1 for r in inspection.refused if r.reason == reason)
            self.metrics.models_refused.labels(model=slot.name, reason=reason).set(float(count))
        slot.refused = inspection.refused

    async def _watch_models(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.draining:
            for slot in self.slots.values():
                try:
                    await loop.run_in_executor(None, self.reload_model, slot)
                except (OSError, ValueError, KeyError, RuntimeError, AifactoryError) as exc:
                    log.error("cannot load the model %s: %s", slot.name, exc)
            await asyncio.sleep(self.config.reload_interval)

    # --- requests -----------------------------------------------------------------------------------

    async def _prepare(self, writer: asyncio.StreamWriter, address: str) -> Peer | None:
        """A new connection: its TLS handshake when the server speaks TLS; None drops it."""
        if self._tls_context is not None and not await self._handshake(writer, address):
            return None
        return Peer(address, self._peer_certificate(writer))

    async def _route(self, request: Request, peer: Peer) -> Response:
        path = request.path
        if path == "/healthz":
            return self._health(request, peer)
        if path == "/metrics":
            if not self._may_read_metrics(peer):
                return Response.json(403, {"error": "forbidden", "reason": "metrics-need-service-identity"})
            self.metrics.inflight.set(float(self.http.inflight))
            self.metrics.connections.set(float(self.http.connections))
            self.metrics.log_disk_free.set(self.decisions.disk_free_fraction)
            self.metrics.log_disk_state.set(LOG_DISK_STATES[self.decisions.disk_state])
            return Response(200, self.metrics.render(), content_type=CONTENT_TYPE)
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["v1", "models"] and parts[3] == "infer":
            if request.method != "POST":
                return Response.json(405, {"error": "method-not-allowed"}, {"Allow": "POST"})
            return await self._infer(parts[2], request, peer)
        if len(parts) == 4 and parts[:2] == ["v1", "decisions"] and parts[3] == "feedback":
            if request.method != "POST":
                return Response.json(405, {"error": "method-not-allowed"}, {"Allow": "POST"})
            return await self._feedback(parts[2], request, peer)
        return Response.json(404, {"error": "not-found"})

    def _may_read_metrics(self, peer: Peer) -> bool:
        """A server that verifies client certificates shows /metrics to Prometheus' service identity
        only (aifactory://SITE/service/prometheus; docs/telemetry.md). Without client certificates
        (plain HTTP, or TLS without a client CA) no caller has an identity to check: open, as before."""
        if self._tls_context is None or not self.config.tls_client_ca:
            return True
        return self.guard.is_service(peer.certificate, PROMETHEUS_SERVICE)

    def _health(self, request: Request, peer: Peer) -> Response:
        """ok / not ok to anyone; the site, version and models (checkpoint paths) only to a caller with a
        valid token or client certificate: paths and steps help an attacker more than a prober."""
        status = 503 if self.draining else 200
        answer: dict[str, Any] = {"status": "not ok" if self.draining else "ok"}
        token = _bearer(request.headers)
        if token is None and peer.certificate is None:
            return Response.json(status, answer)
        if not (token is None and self.guard.is_service(peer.certificate, PROMETHEUS_SERVICE)):
            try:
                self.guard.identify(token, peer.certificate)
            except TokenRejected:
                return Response.json(status, answer)
        answer |= {
            "site": self.plan.site,
            "version": aifactory.__version__,
            "models": {
                name: slot.batcher.model.describe() if slot.batcher.model else None
                for name, slot in sorted(self.slots.items())
            },
            "refused": {
                name: [r.as_dict() for r in slot.refused] for name, slot in sorted(self.slots.items())
            },
        }
        # The canaries taking a share of a model's requests now (docs/loop.md); absent when none runs.
        canaries = {name: slot.watch.canary for name, slot in sorted(self.slots.items()) if slot.watch}
        if canaries:
            answer["canary"] = canaries
        return Response.json(status, answer)

    def _shed(self, peer: Peer) -> Response | None:
        """The answer for a request turned away before any decision, if so: 503 while the log's disk is
        critical (then every request would be denied, unrecorded), 429 past the peer's denials."""
        if self.decisions.disk_state == "critical":
            return Response.json(503, {"error": "log-disk-full"}, {"Retry-After": "30"})
        if not self.denials.admit(peer.address, time.time()):
            self.metrics.rate_limited.inc()
            return Response.json(
                429, {"error": "too-many-denials"}, {"Retry-After": str(round(self.denials.window))}
            )
        return None

    async def _infer(self, name: str, request: Request, peer: Peer) -> Response:
        shed = self._shed(peer)
        if shed is not None:
            return shed
        if nests_deeper_than(request.body, MAX_JSON_DEPTH):  # refused before anything parses it (recursion)
            return Response.json(
                400, {"error": "bad-input", "detail": f"nested deeper than {MAX_JSON_DEPTH}"}
            )
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        assert inbox is not None
        request_id = f"{self._request_prefix}-{next(self._request_numbers)}"
        token = _bearer(request.headers)
        slot = self.slots.get(name)
        serving = slot.batcher.model if slot else None
        answering: list[tuple[LoadedModel | None, Batcher, str | None]] = []  # set once decided
        resource = f"model/{recorded_name(name)}"  # a name from the path, cut short before it is recorded
        decided: asyncio.Future[tuple[Outcome, BaseException | None]] = loop.create_future()

        def decide_and_record() -> None:
            """On an authorization thread: decide, queue the record; answer once it is durable."""
            try:
                outcome = self.guard.decide(
                    token,
                    "infer",
                    resource,
                    # The version that is served now: the record names what would answer (AU-3).
                    request={
                        "id": request_id,
                        "peer": peer.address,
                        "model_digest": serving.digest if serving else None,
                    },
                    certificate=peer.certificate,
                )
                if slot is None:  # recorded as what it is, whoever asks
                    outcome = replace(outcome, allow=False, reasons=("model-not-served-here",), controls=())
                elif outcome.allow:
                    chosen = slot.route(outcome.decision_id)
                    answering.append(chosen)
                    if chosen[2] is not None:  # a canary runs: the record names who answers, and its role
                        digest = chosen[0].digest if chosen[0] else None
                        request = {**outcome.request, "model_digest": digest, "model_role": chosen[2]}
                        outcome = replace(outcome, request=request)
                    self._leave_receipt(name, outcome, chosen[0])
                durable = self.guard.record(outcome)
            except Exception as exc:  # noqa: BLE001 -- the handler must get an answer, even this error
                inbox.settle(decided, None, exc)
                return
            durable.add_done_callback(lambda done: inbox.settle(decided, (outcome, done.exception())))

        if self._authz_outbox:
            self._authz_outbox.submit(decide_and_record)
        else:
            decide_and_record()
        outcome, not_recorded = await decided
        tracing = {"X-Request-Id": request_id, "X-Decision-Id": outcome.decision_id}
        if not_recorded is not None:
            log.error("decision %s not recorded: %r", outcome.decision_id, not_recorded)
            if outcome.allow and slot is not None:  # no feedback on a decision the log does not hold
                forget_receipt(self.plan.model_dir(name), outcome.decision_id)
            self.metrics.decisions_unrecorded.inc()
            return Response.json(
                503, {"error": "log-unavailable", "decision_id": outcome.decision_id}, tracing
            )
        # Counted under the path's model when the plan names it (loaded here or not yet: the decision
        # is about that model either way), else '-' (ServeMetrics bounds the labels by the plan).
        self.metrics.decided(model=name, tenant=outcome.tenant, allow=outcome.allow)
        if not outcome.allow:
            self.denials.denied(peer.address, time.time())
        if slot is None:
            return Response.json(
                404, {"error": "model-not-served-here", "decision_id": outcome.decision_id}, tracing
            )
        if not outcome.allow:
            return Response.json(
                403,
                {
                    "error": "forbidden",
                    "reason": outcome.reasons[0],
                    "reasons": list(outcome.reasons),
                    "decision_id": outcome.decision_id,
                },
                tracing,
            )
        model, batcher, role = answering[0] if answering else (slot.batcher.model, slot.batcher, None)
        if model is None:
            return Response.json(
                503, {"error": "model-not-loaded", "decision_id": outcome.decision_id}, tracing
            )
        rows = _rows(request.body, model.features)
        if isinstance(rows, str):
            return Response.json(
                400, {"error": "bad-input", "detail": rows, "decision_id": outcome.decision_id}, tracing
            )
        future: asyncio.Future[Any] = loop.create_future()
        batcher.submit(rows, lambda result, error: inbox.settle(future, result, error))
        try:
            used, scores = await future
        except LookupError:
            return Response.json(
                503, {"error": "model-not-loaded", "decision_id": outcome.decision_id}, tracing
            )
        except (RuntimeError, ValueError) as exc:  # the forward pass failed: the version's error
            log.error("inference of %s failed on %s: %r", name, model.digest, exc)
            self._count(slot, role or "champion", error=True)
            return Response.json(
                500, {"error": "inference-failed", "decision_id": outcome.decision_id}, tracing
            )
        self._count(slot, role or "champion")
        outputs = [
            {"class": int(np.argmax(row)), "scores": [round(float(s), 6) for s in row]} for row in scores
        ]
        return Response.json(
            200,
            {
                "model": used.name,
                "step": used.step,
                "digest": used.digest,
                "outputs": outputs,
                "decision_id": outcome.decision_id,
            },
            tracing,
        )

    def _leave_receipt(self, name: str, outcome: Outcome, serving: LoadedModel | None) -> None:
        """On an authorization thread, before the record: the receipt feedback is checked against, on the
        site storage (any node finds it), for models trained on data. No receipt, no feedback: counted."""
        model = self.plan.model(name)
        if (
            not self.config.feedback
            or not model.trained_on
            or model.host_path is None
            or outcome.tenant is None
        ):
            return
        try:
            write_receipt(
                self.plan.model_dir(name),
                decision_id=outcome.decision_id,
                tenant=outcome.tenant,
                model=name,
                digest=serving.digest if serving else None,
                host=self.guard.host,
            )
        except (OSError, FeedbackError) as exc:
            log.error("receipt of decision %s not written: %r", outcome.decision_id, exc)
            self.metrics.receipts_unwritten.inc()

    async def _feedback(self, decision_id: str, request: Request, peer: Peer) -> Response:
        """Feedback on a past decision: checked, decided (action `contribute` on the dataset), recorded in
        the decision log, then stored on the dataset's storage; off the event loop (files, policy, fsync)."""
        shed = self._shed(peer)
        if shed is not None:
            return shed
        if not self.config.feedback:
            return Response.json(404, {"error": "feedback-not-taken"})
        if not valid_decision_id(decision_id):  # before anything becomes a path
            self.metrics.feedback.labels(result="bad-decision-id").inc()
            return Response.json(400, {"error": "bad-decision-id"})
        if nests_deeper_than(request.body, MAX_JSON_DEPTH):
            detail = f"nested deeper than {MAX_JSON_DEPTH}"
            return Response.json(400, {"error": "bad-input", "detail": detail})
        try:
            wanted = parse_feedback(request.body)
        except FeedbackError as refused:
            self.metrics.feedback.labels(result=refused.reason).inc()
            return Response.json(400, {"error": refused.reason, "detail": refused.message})
        loop = asyncio.get_running_loop()
        status, answer = await loop.run_in_executor(
            None, self._take_feedback, decision_id, wanted, _bearer(request.headers), peer
        )
        result = answer.get("reason") or answer.get("error") or "accepted"
        self.metrics.feedback.labels(result=str(result)).inc()
        if status in (403, 404):
            self.denials.denied(peer.address, time.time())
        return Response.json(status, answer)

    def _take_feedback(
        self, decision_id: str, wanted: FeedbackRequest, token: str | None, peer: Peer
    ) -> tuple[int, dict[str, Any]]:
        receipt = find_receipt(self._receipt_dirs, decision_id)
        planned = {m.name: m.trained_on for m in self.plan.plan.models}
        trained_on = planned.get(receipt.model, ()) if receipt else ()  # a model gone from the plan: none
        dataset = wanted.dataset or (trained_on[0] if len(trained_on) == 1 else "-")
        outcome = self.guard.decide(
            token,
            "contribute",
            f"dataset/{dataset}",
            request={"peer": peer.address, "feedback_on": decision_id},
            certificate=peer.certificate,
        )
        status = 403
        if outcome.tenant is not None:  # only an identified caller learns whether the decision exists
            refusal = _feedback_refusal(receipt, outcome.tenant, dataset, trained_on)
            if refusal is not None:
                reason, status = refusal  # first, then whatever the policy found besides
                reasons = (reason, *(r for r in outcome.reasons if not outcome.allow))
                controls = tuple(sorted({"AC-3", *(c for c in outcome.controls if not outcome.allow)}))
                outcome = replace(outcome, allow=False, reasons=reasons, controls=controls)
        try:
            self.guard.record(outcome).result(timeout=30)
        except Exception as exc:  # noqa: BLE001 -- an unrecorded decision lets nothing in
            log.error("feedback decision %s not recorded: %r", outcome.decision_id, exc)
            self.metrics.decisions_unrecorded.inc()
            return 503, {"error": "log-unavailable", "decision_id": outcome.decision_id}
        # Feedback is a decision about the model that answered (its receipt's), if any.
        self.metrics.decided(
            model=receipt.model if receipt else None, tenant=outcome.tenant, allow=outcome.allow
        )
        if not outcome.allow or receipt is None:
            error = "decision-not-found" if status == 404 else "forbidden"
            return status, {
                "error": error,
                "reason": outcome.reasons[0],
                "reasons": list(outcome.reasons),
                "decision_id": outcome.decision_id,
            }
        where = self.plan.dataset(dataset)
        if where.host_path is None:
            return 503, {"error": "feedback-unavailable", "decision_id": outcome.decision_id}
        try:
            store_feedback(
                self.plan.dataset_dir(dataset),
                receipt=receipt,
                dataset=dataset,
                request=wanted,
                feedback_decision=outcome.decision_id,
                host=self.guard.host,
                country=self.guard.host_country,
            )
        except FeedbackError as refused:
            return 409, {"error": refused.reason, "decision_id": outcome.decision_id}
        except OSError as exc:
            log.error("feedback on %s not stored: %r", decision_id, exc)
            return 503, {"error": "feedback-unavailable", "decision_id": outcome.decision_id}
        self._feedback_counted(receipt, wanted)
        return 202, {
            "status": "pending",
            "feedback_on": decision_id,
            "dataset": dataset,
            "decision_id": outcome.decision_id,
        }

    def _feedback_counted(self, receipt: Receipt, wanted: FeedbackRequest) -> None:
        """Feedback marking a decision wrong is an error of the version that answered it, when that
        version is this server's champion or canary now (a canary's error rate: docs/loop.md)."""
        slot = self.slots.get(receipt.model)
        if slot is None or not is_negative(wanted.outcome):
            return
        watch = slot.watch
        role = watch.role_of(receipt.digest) if watch else None
        if role is None and receipt.digest == slot.loaded_digest:
            role = "champion"
        if role is not None:
            self._count(slot, role, wrong=True)

    def _record_suppressed(self, *, everything: bool = False) -> None:
        """One record per peer and window for the requests answered 429, with their count (AU-2)."""
        for suppressed in self.denials.ended(time.time(), all_of_them=everything):
            outcome = _suppressed_outcome(suppressed)
            self.guard.record(outcome).add_done_callback(_log_unwritten(outcome.decision_id))

    async def _watch_denials(self) -> None:
        while not self.draining:
            await asyncio.sleep(min(1.0, self.denials.window / 4))
            self._record_suppressed()

    # --- lifecycle ----------------------------------------------------------------------------------

    async def _handshake(self, writer: asyncio.StreamWriter, address: str) -> bool:
        """TLS on a new connection. A refused handshake (a client certificate that is expired, not yet
        valid, from another CA, or missing) never reaches the decision log, which records decisions on
        requests: it is logged with OpenSSL's reason and counted (AU-2, AC-7), then the connection closes."""
        context = self._current_tls()
        if context is None:  # plain HTTP: nothing to negotiate
            return True
        try:
            await writer.start_tls(context, ssl_handshake_timeout=self.config.tls_handshake_timeout)
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or "certificate-verify-failed"
        except ssl.SSLError as exc:
            reason = exc.reason or "ssl-error"
        except (ConnectionError, TimeoutError) as exc:
            reason = type(exc).__name__
        else:
            return True
        log.warning("TLS handshake with %s refused: %s", address, reason)
        self.metrics.tls_refused.labels(reason=reason).inc()
        return False

    def _tls_files(self) -> tuple[Path, ...]:
        config = self.config
        return tuple(p for p in (config.tls_cert, config.tls_key, config.tls_client_ca) if p is not None)

    def _current_tls(self) -> ssl.SSLContext | None:
        """The TLS context for a new connection, built again when the certificate, its key or the client
        CA bundle changed on disk (looked at most every trust_recheck_interval): a rotation rolls them
        out and the server takes them without a restart, so no request fails (docs/operations.md). Files
        that do not load (a certificate copied before its key) keep the previous context until they do."""
        if self._tls_context is None:
            return None
        now = time.monotonic()
        if now - self._tls_checked_at < self.config.trust_recheck_interval:
            return self._tls_context
        self._tls_checked_at = now
        versions = tuple(file_version(path) for path in self._tls_files())
        if versions != self._tls_versions:
            try:
                context = self._tls()
            except (OSError, ssl.SSLError) as exc:
                log.warning("TLS files changed but do not load; serving with the previous ones: %s", exc)
            else:
                self._tls_context, self._tls_versions = context, versions
                log.info("TLS certificate, key or client CA bundle changed: loaded again")
        return self._tls_context

    def _tls(self) -> ssl.SSLContext | None:
        if not self.config.tls_cert:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.config.tls_cert), str(self.config.tls_key or self.config.tls_cert))
        if self.config.tls_client_ca:
            context.load_verify_locations(str(self.config.tls_client_ca))
            context.verify_mode = (
                ssl.CERT_OPTIONAL if self.config.tls_client_auth == "optional" else ssl.CERT_REQUIRED
            )
            context.verify_flags |= ssl.VERIFY_X509_STRICT
        return context

    def _peer_certificate(self, writer: asyncio.StreamWriter) -> PeerCertificate | None:
        """The client certificate the TLS handshake verified against the site CA, if one came."""
        connection = writer.get_extra_info("ssl_object")
        der = connection.getpeercert(binary_form=True) if connection is not None else None
        return read_peer_certificate(der, site=self.plan.site) if der else None

    async def serve(self, *, ready: Callable[[InferenceServer], None] | None = None) -> None:
        torch.set_num_threads(self.config.torch_threads)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests run it in one)
                pass
        self._stop = stop
        self._inbox = LoopInbox(loop)
        if self.authz_workers:
            self._authz_outbox = LoopOutbox(loop, self.authz_workers)
        # each connection's handshake runs in _prepare, to log refusals
        self._tls_versions = tuple(file_version(path) for path in self._tls_files())
        self._tls_context = self._tls()
        server = await self.http.start(self.config.listen, self.config.port)
        self.bound_port = server.sockets[0].getsockname()[1]
        listeners: list[Listener] = [server]
        if self.config.front_door_port is not None:
            front_door = await self.http.start_front_door(
                self.config.listen, self.config.front_door_port, self.config.front_door_addresses
            )
            self.front_door_port = front_door.sockets[0].getsockname()[1]
            listeners.append(front_door)
            log.warning(
                "front door listener on %s:%s for %s",
                self.config.listen,
                self.front_door_port,
                ", ".join(sorted(self.config.front_door_addresses)),
            )
        watcher = asyncio.create_task(self._watch_models())
        self._denial_watcher = asyncio.create_task(self._watch_denials())
        log.warning("aifactory-serve listening on %s:%s", self.config.listen, self.bound_port)
        if ready:
            ready(self)
        await stop.wait()
        await self._drain(listeners, watcher)

    def request_stop(self) -> None:
        """Begin a graceful shutdown from another thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def _drain(self, listeners: list[Listener], watcher: asyncio.Task[None]) -> None:
        self.draining = self.http.draining = True
        for server in listeners:
            server.close()
        watcher.cancel()
        self._denial_watcher.cancel()
        if self.http.inflight:
            try:
                await asyncio.wait_for(self.http.idle.wait(), self.config.drain_timeout)
            except TimeoutError:
                log.error("drain timeout: %d requests still in flight", self.http.inflight)
        await self.http.last_call()
        self._record_suppressed(everything=True)
        for slot in self.slots.values():
            slot.batcher.stop()
            if slot.canary_batcher is not None:
                slot.canary_batcher.stop()
        if self.authz_workers:
            self.authz_workers.shutdown()
        self.decisions.close()  # signs the final head


def _load_version(name: str, version: ModelVersion, alias: str) -> LoadedModel:
    """A verified registry version's checkpoint, loaded into a scorer."""
    found = checkpoint.load(version.files)
    config = ModelConfig.from_dict(found.meta["network"])
    module = MLP(config)
    module.load_state_dict(found.model_state)
    return LoadedModel(
        name, found.step, scorer(module), config.features, str(found.path), version.digest, alias
    )


def _models_to_serve(plan: RuntimePlan, named: tuple[str, ...], host: Host | None) -> list[str]:
    """The models named (each must be the site's), else every model whose serve_on has this host's pool."""
    if named:
        return [plan.model(name).name for name in named]
    pool = host.pool if host else None
    return sorted(m.name for m in plan.plan.models if pool is None or pool in m.serve_on)


def _feedback_refusal(
    receipt: Receipt | None, tenant: str, dataset: str, trained_on: tuple[str, ...]
) -> tuple[str, int] | None:
    """Why feedback from `tenant` on the decision `receipt` stands for is refused (reason, status), if so:
    feedback is on a decision that exists, by the tenant it answered, into data its model learnt from."""
    if receipt is None:
        return "decision-not-found", 404
    if receipt.tenant != tenant:
        return "not-your-decision", 403
    if dataset not in trained_on:
        return "dataset-not-of-model", 403
    return None


def _rows(body: bytes, features: int) -> np.ndarray | str:
    try:
        document = json.loads(body or b"{}")
        rows = np.asarray(document["inputs"], dtype=np.float32)
    except (ValueError, KeyError, TypeError, RecursionError):  # depth is checked before; never a crash
        return 'the body must be JSON {"inputs": [[number, ...], ...]}'
    if rows.ndim != 2 or rows.shape[1] != features or not 0 < rows.shape[0] <= MAX_ROWS:
        return f"inputs must be 1 to {MAX_ROWS} rows of {features} numbers"
    if not np.isfinite(rows).all():
        return "inputs must be finite numbers"
    return rows


def _bearer(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    return authorization[7:].strip() if authorization[:7].lower() == "bearer " else None


def _log_unwritten(decision_id: str) -> Callable[[Future[dict[str, Any]]], None]:
    def check(done: Future[dict[str, Any]]) -> None:
        if done.exception() is not None:
            log.error("rate-limit record %s not written: %r", decision_id, done.exception())

    return check


def _suppressed_outcome(suppressed: Suppressed) -> Outcome:
    began = dt.datetime.fromtimestamp(suppressed.window_start, dt.UTC)
    return Outcome(
        False,
        ("rate-limited",),
        f"rt-{new_decision_id()}",
        "infer",
        "model/*",
        request={
            "peer": suppressed.peer,
            "suppressed": suppressed.count,
            "window_start": began.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "window_seconds": suppressed.window,
        },
    )


def run_server(
    config: ServerConfig, *, authorizer: Authorizer, ready: Callable[[InferenceServer], None] | None = None
) -> InferenceServer:
    """Run until SIGTERM/SIGINT (or `request_stop`), then drain; returns the stopped server."""
    holder: list[InferenceServer] = []

    async def main() -> None:
        server = InferenceServer(config, authorizer=authorizer)
        server._loop = asyncio.get_running_loop()
        holder.append(server)
        await server.serve(ready=ready)

    asyncio.run(main())
    return holder[0]
