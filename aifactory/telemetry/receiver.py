"""The alert receiver: where Alertmanager delivers, on the control host's management address.

Alertmanager posts its webhook JSON (version 4) over TLS with Prometheus' service certificate
(aifactory://SITE/service/prometheus, from the site CA); anything else is refused in the handshake or
answered 403. Each alert in a delivery is appended to the site's operator log (command `alert`,
result `firing <name>` or `resolved <name>`) under the site lock, and the set of firing alerts is
rewritten in the status view, <state>/monitoring/alerts.json, which `aifactory status` reads. When
the site lock is busy (a long `aifactory up`), the receiver answers 503 and Alertmanager retries.

No outside mail or chat: the operator log is where alerts land.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509

from aifactory.durable import atomic_write
from aifactory.errors import SiteLocked, UsageError
from aifactory.state import SiteState

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # Alertmanager batches alerts; a megabyte is thousands of them
LOCK_WAIT = 5.0  # seconds to wait for the site lock before answering 503 (Alertmanager retries)
MAX_VALUE = 256  # characters kept of any label or annotation value
ALERTS_VIEW = ("monitoring", "alerts.json")
KEPT_LABELS = ("alertname", "severity", "host", "instance", "job", "node", "mountpoint", "file", "principal")


@dataclass(frozen=True)
class ReceiverConfig:
    site: str
    address: str
    port: int
    certificate: Path
    key: Path
    client_ca: Path
    allowed_client: str  # the SAN URI a sender must present (Prometheus' service identity)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MAX_VALUE]


def alert_record(alert: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator log keeps of one alert: bounded, only the labels the site's rules use."""
    labels = alert.get("labels") if isinstance(alert.get("labels"), Mapping) else {}
    annotations = alert.get("annotations") if isinstance(alert.get("annotations"), Mapping) else {}
    assert isinstance(labels, Mapping) and isinstance(annotations, Mapping)
    return {
        "status": "resolved" if alert.get("status") == "resolved" else "firing",
        "labels": {k: _short(labels[k]) for k in KEPT_LABELS if k in labels},
        "summary": _short(annotations.get("summary", "")),
        "starts_at": _short(alert.get("startsAt", "")),
        "ends_at": _short(alert.get("endsAt", "")),
        "fingerprint": _short(alert.get("fingerprint", "")),
    }


def read_alerts_view(state: SiteState) -> list[dict[str, Any]]:
    """The firing alerts the receiver last saw (empty before its first delivery)."""
    try:
        data = json.loads(state.path(*ALERTS_VIEW).read_text())
    except (OSError, ValueError):
        return []
    return [a for a in data.get("firing", []) if isinstance(a, dict)] if isinstance(data, dict) else []


def deliver(state: SiteState, payload: Mapping[str, Any]) -> int:
    """Append every alert of one webhook delivery to the operator log and update the status view.
    Raises SiteLocked when the lock stays busy. Returns how many alerts were recorded."""
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise UsageError("an Alertmanager webhook delivery has a list `alerts`")
    records = [alert_record(a) for a in alerts if isinstance(a, Mapping)]
    with state.lock("alert", wait=LOCK_WAIT):
        for record in records:
            state.record(
                command="alert",
                result=f"{record['status']} {record['labels'].get('alertname', '?')}",
                detail=record,
            )
        firing = {a["fingerprint"]: a for a in read_alerts_view(state)}
        for record in records:
            if record["status"] == "resolved":
                firing.pop(record["fingerprint"], None)
            else:
                firing[record["fingerprint"]] = record
        view = {"firing": [firing[k] for k in sorted(firing)]}
        state.subdir(ALERTS_VIEW[0])
        atomic_write(state.path(*ALERTS_VIEW), (json.dumps(view, indent=1, sort_keys=True) + "\n").encode())
    return len(records)


def client_identity(der: bytes | None) -> list[str]:
    """The SAN URIs of a verified client certificate."""
    if not der:
        return []
    try:
        names = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except (ValueError, x509.ExtensionNotFound):
        return []
    return list(names.value.get_values_for_type(x509.UniformResourceIdentifier))


def _handler(state: SiteState, config: ReceiverConfig) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "aifactory-alert-receiver"

        def do_POST(self) -> None:  # noqa: N802 -- http.server's name
            connection = self.connection
            der = connection.getpeercert(binary_form=True) if isinstance(connection, ssl.SSLSocket) else None
            if config.allowed_client not in client_identity(der):
                self._answer(403, {"error": "forbidden"})
                return
            if self.path != "/alerts":
                self._answer(404, {"error": "not-found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY:
                self._answer(413 if length > MAX_BODY else 400, {"error": "bad-length"})
                return
            try:
                payload = json.loads(self.rfile.read(length))
                if not isinstance(payload, dict):
                    raise ValueError("not an object")
                count = deliver(state, payload)
            except (ValueError, UsageError) as exc:
                self._answer(400, {"error": "bad-request", "detail": str(exc)[:200]})
                return
            except SiteLocked:
                self._answer(503, {"error": "site-busy"})
                return
            self._answer(200, {"recorded": count})

        def _answer(self, status: int, body: Mapping[str, Any]) -> None:
            data = (json.dumps(body) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- http.server's signature
            log.info("%s " + format, self.address_string(), *args)

    return Handler


def tls_context(config: ReceiverConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(config.certificate), str(config.key))
    context.load_verify_locations(str(config.client_ca))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class AlertReceiver:
    """The HTTPS server; `serve_forever` until `shutdown` (from another thread or a signal)."""

    def __init__(self, state: SiteState, config: ReceiverConfig) -> None:
        self.server = ThreadingHTTPServer((config.address, config.port), _handler(state, config))
        self.server.socket = tls_context(config).wrap_socket(self.server.socket, server_side=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()
