"""The run's evidence: one JSON per run in the site's state folder, signed with the site's health key
(SSHSIG, namespace aifactory-health), with the allowed_signers that trusts the key beside it:

    <state>/health/runs/<started>.json      the run: every host's measurements, thresholds, verdicts
    <state>/health/runs/<started>.json.sig
    <state>/health/allowed_signers
    ssh-keygen -Y verify -f allowed_signers -I health@SITE -n aifactory-health -s RUN.json.sig < RUN.json

The key is generated on first use (0600, <state>/health/health_key).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from aifactory import signing
from aifactory.health.run import HealthRun
from aifactory.state import SiteState

NAMESPACE = "aifactory-health"
KEY_NAME = "health_key"
ALLOWED_SIGNERS = "allowed_signers"
PASSPHRASE_ENV = "AIFACTORY_HEALTH_KEY_PASSPHRASE"


@dataclass(frozen=True)
class Evidence:
    report: Path
    signature: Path
    allowed_signers: Path
    identity: str

    def as_dict(self) -> dict[str, str]:
        return {
            "report": str(self.report),
            "signature": str(self.signature),
            "allowed_signers": str(self.allowed_signers),
            "identity": self.identity,
            "namespace": NAMESPACE,
        }


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def write_evidence(run: HealthRun, state: SiteState) -> Evidence:
    folder = state.subdir("health")
    identity = f"health@{state.site}"
    if not (folder / KEY_NAME).exists():
        signing.generate_keypair(
            folder, identity=identity, name=KEY_NAME, namespaces=NAMESPACE, passphrase=_passphrase()
        )
    key = signing.load_private_key(folder / KEY_NAME, _passphrase())
    runs = state.subdir("health/runs")
    stamp = run.started.replace(":", "").replace("-", "")
    report = runs / f"{stamp}.json"
    data = (json.dumps(run.as_dict(), indent=2, sort_keys=True) + "\n").encode()
    report.write_bytes(data)
    signature = report.with_name(report.name + ".sig")
    signature.write_text(signing.sign(data, key, NAMESPACE))
    allowed = folder / ALLOWED_SIGNERS
    allowed.write_text(f'{identity} namespaces="{NAMESPACE}" {signing.public_key_line(key.public_key())}\n')
    return Evidence(report, signature, allowed, identity)
