"""A tenant's client for the canary lab test, run inside the lab's control host namespace:

    python -m tests.loop.canary_client BASE MODEL TOKEN_FILE LABEL CANARY_DIGEST TIMEOUT_S

Sends labelled requests to one server (their true class is LABEL) and after each answer gives the
server feedback saying whether it was right (`{"label": LABEL, "correct": ...}`), until /healthz says
the canary takes no more traffic (or TIMEOUT_S passes); then 20 more requests. Prints JSON: every
answer (digest, class, decision id, seconds since start), when the first wrong answer came and when
the server was seen without its canary, by this process's monotonic clock."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

INPUTS = {"inputs": [[0.2] * 16]}


def _call(base: str, path: str, token: str, body: object | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path,
        data=data,
        method="POST" if body is not None else "GET",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return dict(json.loads(answer.read()))


def main(base: str, model: str, token_file: str, label: str, canary: str, timeout_s: str) -> None:
    token = Path(token_file).read_text().strip()
    started = time.monotonic()
    answers: list[dict[str, Any]] = []
    first_bad = withdrawn = None
    seen_canary = False
    while time.monotonic() - started < float(timeout_s):
        running = _call(base, "/healthz", token).get("canary", {}).get(model)
        seen_canary = seen_canary or running == canary
        if seen_canary and running is None:
            withdrawn = time.monotonic() - started
            break
        answer = _call(base, f"/v1/models/{model}/infer", token, INPUTS)
        answered = answer["outputs"][0]["class"]
        correct = answered == int(label)
        now = time.monotonic() - started
        if not correct and first_bad is None:
            first_bad = now
        feedback = {
            "subject": f"lab-{len(answers):05d}",
            "outcome": {"label": int(label), "correct": correct},
        }
        _call(base, f"/v1/decisions/{answer['decision_id']}/feedback", token, feedback)
        answers.append(
            {"digest": answer["digest"], "class": answered, "decision_id": answer["decision_id"], "at": now}
        )
    after = [_call(base, f"/v1/models/{model}/infer", token, INPUTS)["digest"] for _ in range(20)]
    json.dump(
        {"answers": answers, "first_bad": first_bad, "withdrawn": withdrawn, "after": after}, sys.stdout
    )


if __name__ == "__main__":
    main(*sys.argv[1:7])
