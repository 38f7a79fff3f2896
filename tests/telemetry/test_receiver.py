"""The alert receiver: Alertmanager's webhook over TLS with Prometheus' service identity, each alert
appended to the operator log under the site lock and kept in the status view.

Real parts: the receiver's HTTPS server on loopback, certificates from a real site CA (the same
issuer `aifactory monitoring certs` uses), Python's TLS client, the site's hash-chained operator log.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aifactory.state import SiteState
from aifactory.telemetry.receiver import AlertReceiver, ReceiverConfig, read_alerts_view
from aifactory.trust.certs import PROMETHEUS_SERVICE, service_uri
from aifactory.trust.issuing.certs import (
    IssuedCertificate,
    issue_client_certificate,
)
from tests.telemetry.loopback_tls import loopback_tls

SITE = "rcv"
DAY = timedelta(days=1)


@dataclass
class Running:
    state: SiteState
    port: int
    ca: Path
    prometheus: IssuedCertificate
    tenant: IssuedCertificate

    def post(self, body: object, client: IssuedCertificate | None = None) -> tuple[int, dict[str, object]]:
        context = ssl.create_default_context(cafile=str(self.ca))
        who = client or self.prometheus
        context.load_cert_chain(str(who.certificate), str(who.key))
        connection = http.client.HTTPSConnection("localhost", self.port, context=context, timeout=30)
        data = json.dumps(body).encode()
        connection.request("POST", "/alerts", body=data, headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        payload = json.loads(answer.read())
        connection.close()
        return answer.status, payload


def _alert(status: str, name: str, host: str, fingerprint: str) -> dict[str, object]:
    return {
        "status": status,
        "labels": {"alertname": name, "host": host, "severity": "critical", "request_id": "never-kept"},
        "annotations": {"summary": f"host {host} is down"},
        "startsAt": "2026-12-02T01:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": fingerprint,
    }


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    expires = datetime.now(UTC) + DAY
    tls = loopback_tls(tmp_path, site=SITE, expires=expires)
    trust, ca, server, prometheus = tls.trust, tls.ca, tls.server, tls.prometheus
    tenant = issue_client_certificate(
        trust, site=SITE, tenant="health", expires=expires, out_dir=tmp_path / "t"
    )
    state = SiteState.for_site(SITE, home=tmp_path / "state")
    config = ReceiverConfig(
        site=SITE,
        address="127.0.0.1",
        port=0,
        certificate=server.certificate,
        key=server.key,
        client_ca=ca,
        allowed_client=service_uri(SITE, PROMETHEUS_SERVICE),
    )
    receiver = AlertReceiver(state, config)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    yield Running(state, receiver.port, ca, prometheus, tenant)
    receiver.shutdown()


def _records(state: SiteState) -> list[dict[str, object]]:
    return [json.loads(line) for line in state.operator_log.read_text().splitlines()]


def test_a_delivery_lands_in_the_operator_log_and_the_status_view(running: Running) -> None:
    status, answer = running.post({"version": "4", "alerts": [_alert("firing", "HostDown", "cpu-001", "a1")]})
    assert (status, answer) == (200, {"recorded": 1})
    (record,) = [r for r in _records(running.state) if r["command"] == "alert"]
    assert record["result"] == "firing HostDown"
    detail = record["detail"]
    assert isinstance(detail, dict)
    assert detail["labels"] == {"alertname": "HostDown", "host": "cpu-001", "severity": "critical"}
    assert [a["fingerprint"] for a in read_alerts_view(running.state)] == ["a1"]
    assert running.state.verify_operator_log().ok

    status, _ = running.post({"version": "4", "alerts": [_alert("resolved", "HostDown", "cpu-001", "a1")]})
    assert status == 200
    assert _records(running.state)[-1]["result"] == "resolved HostDown"
    assert read_alerts_view(running.state) == []


def test_only_prometheus_service_identity_may_deliver(running: Running) -> None:
    status, answer = running.post({"alerts": [_alert("firing", "HostDown", "x", "b")]}, client=running.tenant)
    assert (status, answer) == (403, {"error": "forbidden"})
    assert not running.state.operator_log.exists()


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def test_a_busy_site_lock_answers_503_so_alertmanager_retries(running: Running) -> None:
    """Another command (another process, as `aifactory up` would be) holds the site lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(running.state.path("lock"))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        status, answer = running.post({"alerts": [_alert("firing", "HostDown", "x", "c")]})
    finally:
        holder.kill()
        holder.wait()
    assert (status, answer) == (503, {"error": "site-busy"})
    assert running.post({"alerts": [_alert("firing", "HostDown", "x", "c")]})[0] == 200


def test_a_delivery_that_is_not_alertmanagers_is_refused(running: Running) -> None:
    assert running.post({"alerts": "nope"})[0] == 400
    assert running.post(["not", "an", "object"])[0] == 400
    assert not running.state.operator_log.exists()
