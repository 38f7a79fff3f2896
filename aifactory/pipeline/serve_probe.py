"""The serve stage's probe: one allowed and one denied inference request against a site's server.

Run on the control host as `python -m aifactory.pipeline.serve_probe BASE MODEL ALLOWED DENIED TIMEOUT`
(the tokens are read from files, never from the command line); prints one JSON object
`{"allowed": {...}, "denied": {...}}` with each answer's status and body. Standard library only
(with aifactory's console edge, itself standard library only): it runs wherever the control host
can reach the server.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aifactory.console import DEBUG_HELP, UsageParser, run_console
from aifactory.errors import AifactoryError, Location, PrerequisiteError


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for_model(base: str, model: str, token: str, timeout_s: float, digest: str | None = None) -> int:
    """The model's number of input features once the server has loaded it (the version `digest`, when
    given), asked with a token: the server shows model details only to a caller with one."""
    deadline = time.monotonic() + timeout_s
    last_problem = "no answer yet"
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"{base}/healthz", headers=_bearer(token))
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                health = json.load(answer)
            info = (health.get("models") or {}).get(model)
            if info and info.get("features") and digest in (None, info.get("digest")):
                return int(info["features"])
            last_problem = f"{model} {digest or ''} not loaded yet; refused: {health.get('refused')}"
        except (OSError, ValueError) as exc:
            last_problem = str(exc)
        time.sleep(1)
    raise AifactoryError(
        f"the model {model} was not loaded within {timeout_s:.0f} s ({last_problem})", code="model-not-loaded"
    )


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


def _token(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise PrerequisiteError(
            f"cannot read the token file: {exc.strerror}",
            code="token-unreadable",
            location=Location(file=str(path)),
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    return run_console(_probe, argv, log_format=None)


def _probe(arguments: list[str]) -> int:
    parser = UsageParser(prog="python -m aifactory.pipeline.serve_probe")
    parser.add_argument("base", metavar="BASE_URL")
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("allowed_file", metavar="ALLOWED_TOKEN_FILE", type=Path)
    parser.add_argument("denied_file", metavar="DENIED_TOKEN_FILE", type=Path)
    parser.add_argument("timeout", metavar="TIMEOUT_S", type=float)
    parser.add_argument("--digest", help="wait until the server serves this model version")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(arguments)
    allowed, denied = _token(args.allowed_file), _token(args.denied_file)
    features = wait_for_model(args.base, args.model, allowed, args.timeout, args.digest)
    answers = {
        "allowed": ask(args.base, args.model, allowed, features),
        "denied": ask(args.base, args.model, denied, features),
    }
    print(json.dumps(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
