"""A small loopback server speaking OPA's REST API, evaluating with the embedded regorus engine.

No `opa` binary can be installed on this machine, so the OPA backend's equality test runs against
this stand-in: it accepts policy uploads (PUT /v1/policies/<id>), data writes (PUT /v1/data/<path>)
and Data API queries (POST /v1/data/<path> {"input": ...} -> {"result": ...}), as OPA does. The same
test also runs against a real `opa run --server` whenever `opa` is on the PATH.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import regorus


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.policies: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.engine: regorus.Engine | None = None
        self.queries = 0
        self.delay_s = 0.0  # each answer waits this long first: a slow or busy server

    def put_data(self, path: list[str], value: Any) -> None:
        with self.lock:
            if not path:
                self.data = value
            else:
                node = self.data
                for key in path[:-1]:
                    node = node.setdefault(key, {})
                node[path[-1]] = value
            self.engine = None

    def put_policy(self, policy_id: str, source: str) -> None:
        with self.lock:
            self.policies[policy_id] = source
            self.engine = None

    def query(self, path: list[str], input_doc: Any) -> Any:
        with self.lock:
            if self.engine is None:
                engine = regorus.Engine()
                for policy_id, source in sorted(self.policies.items()):
                    engine.add_policy(policy_id, source)
                engine.add_data_json(json.dumps(self.data))
                self.engine = engine
            self.queries += 1
            self.engine.set_input_json(json.dumps(input_doc if input_doc is not None else {}))
            value = json.loads(self.engine.eval_rule_as_json("data." + ".".join(path)))
            return None if value == "<undefined>" else value


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            return

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _reply(self, status: int, payload: Any = None) -> None:
            body = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _route(self) -> tuple[str, list[str]]:
            parts = [p for p in self.path.split("?")[0].split("/") if p]
            return (parts[1] if len(parts) > 1 else ""), parts[2:]

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            kind, _ = self._route()
            if kind == "policies":
                self._reply(200, {"result": [{"id": k} for k in sorted(state.policies)]})
            else:
                self._reply(200, {})

        def do_PUT(self) -> None:  # noqa: N802
            time.sleep(state.delay_s)
            kind, rest = self._route()
            body = self._body()
            if kind == "policies":
                state.put_policy("/".join(rest), body.decode())
                self._reply(200, {})
            elif kind == "data":
                state.put_data(rest, json.loads(body))
                self._reply(204)
            else:
                self._reply(404, {"code": "resource_not_found", "message": self.path})

        def do_POST(self) -> None:  # noqa: N802
            time.sleep(state.delay_s)
            kind, rest = self._route()
            if kind != "data":
                self._reply(404, {"code": "resource_not_found", "message": self.path})
                return
            request = json.loads(self._body() or b"{}")
            try:
                value = state.query(rest, request.get("input"))
            except RuntimeError as exc:
                self._reply(500, {"code": "internal_error", "message": str(exc).splitlines()[0]})
                return
            self._reply(200, {} if value is None else {"result": value})

    return Handler


@contextmanager
def opa_loopback_server() -> Iterator[tuple[str, _State]]:
    """(url, state) of a running server on 127.0.0.1 and a free port; stopped on exit."""
    state = _State()
    server = HTTPServer(("127.0.0.1", 0), _handler(state))

    def serve() -> None:
        # One thread serves every request, so the engine (which may not cross threads) is built,
        # used and dropped on this thread only.
        try:
            server.serve_forever()
        finally:
            state.engine = None

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
