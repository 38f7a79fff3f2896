"""Token and log-head verifiers read their trust file as `ssh-keygen -Y verify` does: a line that is
expired, for another namespace, marked cert-authority or for another signer grants nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from aifactory.errors import TokenRejected
from aifactory.trust.decisionlog import DecisionLog, log_key_dir, verify_log
from aifactory.trust.issuing.tokens import issue_token
from aifactory.trust.tokens import TokenVerifier, TrustFiles

from .test_tokens import NOW


def hostile(line: str) -> dict[str, str]:
    """Variants of a generated `identity namespaces="ns" ssh-ed25519 KEY` line that must refuse."""
    identity, options, key = line.split(" ", 2)
    namespace = options.split("=", 1)[1]
    return {
        "expired": f'{identity} valid-before="20200101",namespaces={namespace} {key}',
        "other namespace": f'{identity} valid-after="20200101",namespaces="aifactory-audit" {key}',
        "cert-authority": f"{identity} cert-authority,namespaces={namespace} {key}",
        "other signer": f"someone-else namespaces={namespace} {key}",
        "negated signer": f"!{identity},* {key}",
    }


CASES = list(hostile('x namespaces="n" k'))


@pytest.mark.parametrize("case", CASES)
def test_tokens_refuse_what_ssh_keygen_refuses(tmp_path: Path, case: str) -> None:
    trust = TrustFiles(tmp_path / "runtime")
    token = issue_token(trust, site="lab", tenant="health", expires=NOW.replace(year=2027), now=NOW).token
    assert TokenVerifier(trust, site="lab").verify(token, now=NOW.timestamp()).tenant == "health"
    original = trust.allowed_signers.read_text().strip()
    trust.allowed_signers.write_text(hostile(original)[case] + "\n")
    with pytest.raises(TokenRejected) as caught:
        TokenVerifier(trust, site="lab").verify(token, now=NOW.timestamp())
    assert caught.value.reason == "token-bad-signature"


# A signed head does not name its signer's identity: the trust file's own name for the key is taken
# (as `ssh-keygen -Y find-principals` finds it), so "another signer" is one it would accept.
@pytest.mark.parametrize("case", [c for c in CASES if c != "other signer"])
def test_log_heads_refuse_what_ssh_keygen_refuses(tmp_path: Path, case: str) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, sign_every=2, sign_interval=60)
    for number in range(3):
        log.record({"decision_id": f"d{number}", "allow": True})
    log.close()
    assert verify_log(path).ok
    kept = tmp_path / "auditor-copy"
    shutil.copy(log_key_dir(path) / "allowed_signers", kept)
    kept.write_text(hostile(kept.read_text().strip())[case] + "\n")
    report = verify_log(path, allowed_signers=kept)
    assert not report.ok
    assert any("signed head does not verify" in problem for problem in report.problems)
