"""The serve stage's probe: one allowed and one denied inference request against a site's server.

Run on the control host as `python -m aifactory.pipeline.serve_probe BASE MODEL ALLOWED DENIED TIMEOUT`
(the tokens are read from files, never from the command line); prints one JSON object
`{"allowed": {...}, "denied": {...}}` with each answer's status and body. Standard library only:
it runs wherever the control host can reach the server.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for_model(base: str, model: str, token: str, timeout_s: float) -> int:
    """The model's number of input features once the server has loaded it (asked with a token:
    the server shows model details only to a caller with one)."""
    deadline = time.monotonic() + timeout_s
    last_problem = "no answer yet"
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"{base}/healthz", headers=_bearer(token))
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                health = json.load(answer)
            info = (health.get("models") or {}).get(model)
            if info and info.get("features"):
                return int(info["features"])
            last_problem = f"{model} not loaded yet"
        except (OSError, ValueError) as exc:
            last_problem = str(exc)
        time.sleep(1)
    raise TimeoutError(f"the model {model} was not loaded within {timeout_s:.0f} s ({last_problem})")


def ask(base: str, model: str, token: str, features: int) -> dict[str, Any]:
    body = json.dumps({"inputs": [[0.5] * features]}).encode()
    request = urllib.request.Request(
        f"{base}/v1/models/{model}/infer",
        data=body,
        method="POST",
        headers={**_bearer(token), "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return {"status": answer.status, **json.load(answer)}
    except urllib.error.HTTPError as error:
        return {"status": error.code, **json.load(error)}


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        sys.stderr.write("usage: serve_probe BASE_URL MODEL ALLOWED_TOKEN_FILE DENIED_TOKEN_FILE TIMEOUT_S\n")
        return 2
    base, model, allowed_file, denied_file, timeout = argv
    allowed, denied = (Path(path).read_text(encoding="utf-8").strip() for path in (allowed_file, denied_file))
    try:
        features = wait_for_model(base, model, allowed, float(timeout))
    except TimeoutError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    answers = {"allowed": ask(base, model, allowed, features), "denied": ask(base, model, denied, features)}
    print(json.dumps(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
