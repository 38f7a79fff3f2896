"""The inference server: HTTP/1.1 + JSON on asyncio, policy per request, dynamic batching.

    GET  /healthz                       200 {"status": "ok", "model": null | {...}} (503 while draining)
    GET  /metrics                       Prometheus text
    POST /v1/models/<name>/infer        {"inputs": [[f1, ..., fn], ...]}  with  Authorization: Bearer <token>
                                        and/or a client certificate from the site CA (mTLS)
         200 {"model", "step", "outputs": [{"class", "scores"}], "decision_id"}
         403 {"error": "forbidden", "reason", "reasons", "decision_id"}    (never the classification)
         503 {"error": "model-not-loaded" | "log-unavailable" | "draining"}

Per request: the caller is identified (tenant from a verified token and/or the client certificate
the TLS handshake verified, read once per connection; `aifactory.runtime.certs`), the policy decides on a
fixed pool of authorization threads (each keeps its own regorus engine), and the decision is
appended to the decision log and fsync'd before any answer is written. Allowed inputs go to the
batcher thread, which collects requests up to `max_batch` rows or `max_wait_ms`, runs one forward
pass and answers each request with its rows.

The server starts healthy with no model: it watches the model's planned checkpoint folder and loads
the newest complete checkpoint when `latest` appears or changes. SIGTERM/SIGINT drain: stop
accepting, finish every request in flight, sign the log's final head, exit.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import queue
import signal
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aifactory.runtime import checkpoint
from aifactory.runtime.authz import Authorizer, Guard, Outcome
from aifactory.runtime.certs import PeerCertificate, read_peer_certificate
from aifactory.runtime.cpus import CpuSplit
from aifactory.runtime.decisionlog import DecisionLog
from aifactory.runtime.handoff import LoopInbox, LoopOutbox, Workers
from aifactory.runtime.metrics import Registry
from aifactory.runtime.model import MLP, ModelConfig, Scorer, scorer
from aifactory.runtime.siteplan import RuntimePlan
from aifactory.runtime.tokens import TokenVerifier, TrustFiles

log = logging.getLogger(__name__)
REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
MAX_ROWS = 1024


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
    reload_interval: float = 2.0
    drain_timeout: float = 30.0
    max_body: int = 1 << 20
    trust_recheck_interval: float = 0.5  # a revocation takes effect within this many seconds
    tls_handshake_timeout: float = 30.0


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

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "step": self.step, "features": self.features, "checkpoint": self.path}


@dataclass
class _Work:
    rows: np.ndarray
    done: Callable[[Any, BaseException | None], None]
    model: LoadedModel = field(init=False)


class Batcher:
    """One thread: collect requests up to max_batch rows or max_wait, run one forward pass, answer each."""

    def __init__(
        self, *, max_batch: int, max_wait: float, metrics: Registry, cpus: CpuSplit | None = None
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
        self.metrics.observe("aifactory_serve_forward_seconds", time.perf_counter() - began)
        self.metrics.observe("aifactory_serve_batch_size", float(sum(counts)))
        start = 0
        for work, count in zip(batch, counts, strict=True):
            work.done((model, scores[start : start + count]), None)
            start += count


@dataclass
class ModelSlot:
    """One model this server may serve: where its checkpoints appear, and its own batcher."""

    name: str
    checkpoints: Path
    batcher: Batcher
    loaded_step: int | None = None


class InferenceServer:
    def __init__(self, config: ServerConfig, *, authorizer: Authorizer) -> None:
        self.config = config
        # Before the server's threads start: they inherit "off the forward CPUs".
        if config.cpu_split is not None:
            config.cpu_split.keep_others_off_forward()
        self.plan = RuntimePlan.load(config.plan_path, storage_root=config.storage_root)
        host = self.plan.this_host(config.host_name)
        self.metrics = _registry()
        self.decisions = DecisionLog(
            config.runtime_dir / "decisions.jsonl",
            sign_every=config.sign_every,
            sign_interval=config.sign_interval,
            head_copies=config.head_copies,
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
            host=(host or {}).get("name"),
            host_country=(host or {}).get("country"),
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
                self.plan.model_dir(name) / "checkpoints",
                Batcher(
                    max_batch=config.max_batch,
                    max_wait=config.max_wait_ms / 1000,
                    metrics=self.metrics,
                    cpus=config.cpu_split,
                ),
            )
            for name in _models_to_serve(self.plan, config.models, host)
        }
        self.draining = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._connections: set[asyncio.StreamWriter] = set()
        self._tls_context: ssl.SSLContext | None = None
        self.bound_port: int | None = None
        self._request_prefix = uuid.uuid4().hex[:8]  # this server run; numbers count its requests
        self._request_numbers = itertools.count(1)

    def _warm_engine(self) -> None:
        """Compile this thread's policy engine now, not on its first request (that one would wait)."""
        self.guard.authorizer.decide("-", "infer", "model/-", host_country=self.guard.host_country)

    # --- model --------------------------------------------------------------------------------------

    def reload_model(self, slot: ModelSlot) -> bool:
        """Load the newest complete checkpoint if `latest` changed; True when a new model is live."""
        step = checkpoint.latest_step(slot.checkpoints)
        if step is None or step == slot.loaded_step:
            return False
        found = checkpoint.latest_complete(slot.checkpoints)
        if found is None:
            return False
        config = ModelConfig.from_dict(found.meta["network"])
        module = MLP(config)
        module.load_state_dict(found.model_state)
        slot.batcher.model = LoadedModel(
            slot.name, found.step, scorer(module), config.features, str(found.path)
        )
        slot.loaded_step = step
        self.metrics.set("aifactory_serve_model_step", float(found.step))
        log.warning("serving %s from %s", slot.name, found.path)
        return True

    async def _watch_models(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.draining:
            for slot in self.slots.values():
                try:
                    await loop.run_in_executor(None, self.reload_model, slot)
                except (OSError, ValueError, KeyError, RuntimeError) as exc:
                    log.error("cannot load the model from %s: %s", slot.checkpoints, exc)
            await asyncio.sleep(self.config.reload_interval)

    # --- HTTP ---------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        address = (writer.get_extra_info("peername") or ("?",))[0]
        try:
            if self._tls_context is not None and not await self._handshake(writer, address):
                return
            peer = Peer(address, self._peer_certificate(writer))
            while not self.draining:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await self._send(writer, 431, {"error": "headers-too-large"}, keep_alive=False)
                    return
                self.inflight += 1
                self._idle.clear()
                try:
                    keep_alive = await self._exchange(head, reader, writer, peer)
                finally:
                    self.inflight -= 1
                    if not self.inflight:
                        self._idle.set()
                if not keep_alive or self.draining:
                    return
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _exchange(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> bool:
        started = time.perf_counter()
        try:
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, v in (line.split(":", 1) for line in header_lines if ":" in line)
            }
            length = int(headers.get("content-length", "0"))
        except ValueError:
            await self._send(writer, 400, {"error": "bad-request"}, keep_alive=False)
            return False
        if length > self.config.max_body or length < 0 or "chunked" in headers.get("transfer-encoding", ""):
            await self._send(writer, 413, {"error": "body-too-large-or-chunked"}, keep_alive=False)
            return False
        body = await reader.readexactly(length) if length else b""
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        status, payload, extra = await self._route(method, target, headers, body, peer)
        await self._send(writer, status, payload, keep_alive=keep_alive, extra=extra)
        self.metrics.inc("aifactory_serve_requests_total", code=str(status))
        self.metrics.observe("aifactory_serve_request_seconds", time.perf_counter() - started)
        return keep_alive

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: Any,
        *,
        keep_alive: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        if isinstance(payload, str):
            body, kind = payload.encode(), "text/plain; version=0.0.4"
        else:
            body, kind = json.dumps(payload, separators=(",", ":")).encode(), "application/json"
        lines = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
            f"Content-Type: {kind}",
            f"Content-Length: {len(body)}",
            "Connection: " + ("keep-alive" if keep_alive else "close"),
            *(f"{k}: {v}" for k, v in (extra or {}).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass

    async def _route(
        self, method: str, target: str, headers: dict[str, str], body: bytes, peer: Peer
    ) -> tuple[int, Any, dict[str, str]]:
        path = target.split("?", 1)[0]
        if path == "/healthz":
            status = 503 if self.draining else 200
            models = {
                name: slot.batcher.model.describe() if slot.batcher.model else None
                for name, slot in sorted(self.slots.items())
            }
            return (
                status,
                {"status": "draining" if self.draining else "ok", "site": self.plan.site, "models": models},
                {},
            )
        if path == "/metrics":
            self.metrics.set("aifactory_serve_inflight_requests", float(self.inflight))
            return 200, self.metrics.render(), {}
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["v1", "models"] and parts[3] == "infer":
            if method != "POST":
                return 405, {"error": "method-not-allowed"}, {"Allow": "POST"}
            return await self._infer(parts[2], headers, body, peer)
        return 404, {"error": "not-found"}, {}

    async def _infer(
        self, name: str, headers: dict[str, str], body: bytes, peer: Peer
    ) -> tuple[int, Any, dict[str, str]]:
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        assert inbox is not None
        request_id = f"{self._request_prefix}-{next(self._request_numbers)}"
        authorization = headers.get("authorization", "")
        token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else None
        decided: asyncio.Future[tuple[Outcome, BaseException | None]] = loop.create_future()

        def decide_and_record() -> None:
            """On an authorization thread: decide, queue the record; answer once it is durable."""
            try:
                outcome = self.guard.decide(
                    token,
                    "infer",
                    f"model/{name}",
                    request={"id": request_id, "peer": peer.address},
                    certificate=peer.certificate,
                )
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
            return 503, {"error": "log-unavailable", "decision_id": outcome.decision_id}, tracing
        self.metrics.inc("aifactory_serve_decisions_total", allow=str(outcome.allow).lower())
        if not outcome.allow:
            return (
                403,
                {
                    "error": "forbidden",
                    "reason": outcome.reasons[0],
                    "reasons": list(outcome.reasons),
                    "decision_id": outcome.decision_id,
                },
                tracing,
            )
        slot = self.slots.get(name)
        if slot is None:
            return 404, {"error": "model-not-served-here", "decision_id": outcome.decision_id}, tracing
        model = slot.batcher.model
        if model is None:
            return 503, {"error": "model-not-loaded", "decision_id": outcome.decision_id}, tracing
        rows = _rows(body, model.features)
        if isinstance(rows, str):
            return 400, {"error": "bad-input", "detail": rows, "decision_id": outcome.decision_id}, tracing
        future: asyncio.Future[Any] = loop.create_future()
        slot.batcher.submit(rows, lambda result, error: inbox.settle(future, result, error))
        try:
            used, scores = await future
        except LookupError:
            return 503, {"error": "model-not-loaded", "decision_id": outcome.decision_id}, tracing
        outputs = [
            {"class": int(np.argmax(row)), "scores": [round(float(s), 6) for s in row]} for row in scores
        ]
        return (
            200,
            {"model": used.name, "step": used.step, "outputs": outputs, "decision_id": outcome.decision_id},
            tracing,
        )

    # --- lifecycle ----------------------------------------------------------------------------------

    async def _handshake(self, writer: asyncio.StreamWriter, address: str) -> bool:
        """TLS on a new connection. A refused handshake (a client certificate that is expired, not yet
        valid, from another CA, or missing) never reaches the decision log, which records decisions on
        requests: it is logged with OpenSSL's reason and counted (AU-2, AC-7), then the connection closes."""
        try:
            await writer.start_tls(self._tls_context, ssl_handshake_timeout=self.config.tls_handshake_timeout)
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or "certificate-verify-failed"
        except ssl.SSLError as exc:
            reason = exc.reason or "ssl-error"
        except (ConnectionError, TimeoutError) as exc:
            reason = type(exc).__name__
        else:
            return True
        log.warning("TLS handshake with %s refused: %s", address, reason)
        self.metrics.inc("aifactory_serve_tls_refused_total", reason=reason)
        return False

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
        self._tls_context = self._tls()  # each connection's handshake runs in _handle, to log refusals
        server = await asyncio.start_server(
            self._handle, self.config.listen, self.config.port, limit=64 * 1024, backlog=1024
        )
        self.bound_port = server.sockets[0].getsockname()[1]
        watcher = asyncio.create_task(self._watch_models())
        log.warning("aifactory-serve listening on %s:%s", self.config.listen, self.bound_port)
        if ready:
            ready(self)
        await stop.wait()
        await self._drain(server, watcher)

    def request_stop(self) -> None:
        """Begin a graceful shutdown from another thread."""
        loop = getattr(self, "_loop", None)
        if loop:
            loop.call_soon_threadsafe(self._stop.set)

    async def _drain(self, server: asyncio.Server, watcher: asyncio.Task[None]) -> None:
        self.draining = True
        server.close()
        watcher.cancel()
        if self.inflight:
            try:
                await asyncio.wait_for(self._idle.wait(), self.config.drain_timeout)
            except TimeoutError:
                log.error("drain timeout: %d requests still in flight", self.inflight)
        for writer in list(self._connections):
            writer.close()
        for slot in self.slots.values():
            slot.batcher.stop()
        if self.authz_workers:
            self.authz_workers.shutdown()
        self.decisions.close()  # signs the final head


def _models_to_serve(plan: RuntimePlan, named: tuple[str, ...], host: dict[str, Any] | None) -> list[str]:
    """The models named (each must be the site's), else every model whose serve_on has this host's pool."""
    if named:
        return [str(plan.model(name)["name"]) for name in named]
    pool = (host or {}).get("pool")
    return sorted(
        str(m["name"]) for m in plan.data.get("models", []) if pool is None or pool in m.get("serve_on", [])
    )


def _rows(body: bytes, features: int) -> np.ndarray | str:
    try:
        document = json.loads(body or b"{}")
        rows = np.asarray(document["inputs"], dtype=np.float32)
    except (ValueError, KeyError, TypeError):
        return 'the body must be JSON {"inputs": [[number, ...], ...]}'
    if rows.ndim != 2 or rows.shape[1] != features or not 0 < rows.shape[0] <= MAX_ROWS:
        return f"inputs must be 1 to {MAX_ROWS} rows of {features} numbers"
    if not np.isfinite(rows).all():
        return "inputs must be finite numbers"
    return rows


def _registry() -> Registry:
    metrics = Registry()
    metrics.counter("aifactory_serve_requests_total", "HTTP requests answered, by status code.")
    metrics.counter("aifactory_serve_decisions_total", "Authorization decisions recorded, by outcome.")
    metrics.histogram(
        "aifactory_serve_batch_size",
        "Rows per forward pass formed by the batcher.",
        (1, 2, 4, 8, 16, 32, 64, 128, 256),
    )
    metrics.histogram(
        "aifactory_serve_forward_seconds",
        "Wall-clock time of one batched forward pass (softmax included).",
        (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    )
    metrics.histogram(
        "aifactory_serve_request_seconds",
        "Time from request head to answer.",
        (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    )
    metrics.counter(
        "aifactory_serve_tls_refused_total", "TLS handshakes refused (e.g. a client certificate), by reason."
    )
    metrics.gauge("aifactory_serve_model_step", "Training step of the checkpoint being served.")
    metrics.gauge("aifactory_serve_inflight_requests", "Requests being answered.")
    return metrics


def run_server(
    config: ServerConfig, *, authorizer: Authorizer, ready: Callable[[InferenceServer], None] | None = None
) -> InferenceServer:
    """Run until SIGTERM/SIGINT (or `request_stop`), then drain; returns the stopped server."""
    holder: list[InferenceServer] = []

    async def main() -> None:
        server = InferenceServer(config, authorizer=authorizer)
        server._loop = asyncio.get_running_loop()  # type: ignore[attr-defined]
        holder.append(server)
        await server.serve(ready=ready)

    asyncio.run(main())
    return holder[0]
