"""The signed activation record: written by `authorize`, checked by `activation_allows` and by the
stock `ssh-keygen -Y verify`, and refused, each with the reason, when it is for another site, another
version or another build, altered, too old, dated ahead, unsigned, or signed by a key the site does
not trust for activations."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aifactory import signing
from aifactory.errors import ActivationError
from aifactory.lifecycle.activation import (
    MAX_AGE,
    NAMESPACE,
    ActivationRecord,
    activation_allows,
    authorize,
    record_path,
    signature_path,
)
from aifactory.state import SiteState

from .conftest import ADMIN, Keys

DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32
SIGNED = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def state(tmp_path: Path) -> SiteState:
    return SiteState.for_site("lab", home=tmp_path / "state")


def sign_as_admin(state: SiteState, keys: Keys, version: str = "1.0", **fields: str) -> Path:
    return authorize(
        state,
        version=fields.pop("version_in_record", version),
        digest=fields.pop("digest", DIGEST),
        reason=fields.pop("reason", "INC-42: 1.1 drops requests"),
        key=signing.load_private_key(fields.pop("key", keys.admin)),
        trust=keys.trust,
        now=SIGNED,
    ).path


def test_a_record_the_admin_signs_allows_exactly_its_version(state: SiteState, keys: Keys) -> None:
    path = sign_as_admin(state, keys)
    assert path == record_path(state, "1.0") and path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_bytes()) == {
        "schema": "aifactory.activation/v1",
        "site": "lab",
        "version": "1.0",
        "digest": DIGEST,
        "time": "2026-12-02T09:00:00Z",
        "reason": "INC-42: 1.1 drops requests",
        "who": ADMIN,
    }
    verdict = activation_allows(
        state, version="1.0", digest=DIGEST, trust=keys.trust, now=SIGNED + timedelta(hours=1)
    )
    assert verdict.allowed and verdict.code == "activation-valid" and verdict.record is not None
    assert verdict.record.who == ADMIN and ADMIN in verdict.message
    logged = [json.loads(line) for line in state.operator_log.read_text().splitlines()]
    assert [(r["command"], r["result"], r["bundle_digest"]) for r in logged] == [
        ("activation authorize", "signed", DIGEST)
    ]
    assert logged[0]["detail"]["sha256"] == verdict.sha256


def test_the_stock_ssh_keygen_verifies_the_record(state: SiteState, keys: Keys) -> None:
    path = sign_as_admin(state, keys)
    done = signing.ssh_keygen_verify(
        path, signature_path(path), allowed_signers=keys.trust, identity=ADMIN, namespace=NAMESPACE
    )
    assert done.returncode == 0, done.stderr
    assert f'Good "{NAMESPACE}" signature for {ADMIN}' in done.stdout + done.stderr


def test_a_record_signed_with_the_stock_ssh_keygen_is_accepted(state: SiteState, keys: Keys) -> None:
    record = ActivationRecord("lab", "1.0", DIGEST, "2026-12-02T09:00:00Z", "signed by hand", ADMIN)
    path = record_path(state, "1.0")
    path.parent.mkdir(parents=True)
    path.write_bytes(record.to_bytes())
    subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-f", str(keys.admin), "-n", NAMESPACE, str(path)], check=True
    )
    assert signature_path(path).is_file()
    verdict = activation_allows(state, version="1.0", digest=DIGEST, trust=keys.trust, now=SIGNED)
    assert verdict.allowed, verdict.message


def copy_record(source: SiteState, target: SiteState, *, from_version: str, to_version: str) -> None:
    for suffix in ("", ".sig"):
        data = Path(f"{record_path(source, from_version)}{suffix}").read_bytes()
        destination = Path(f"{record_path(target, to_version)}{suffix}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(data)


def _another_site(state: SiteState, keys: Keys, tmp: Path) -> None:
    other = SiteState.for_site("other", home=tmp / "elsewhere")
    sign_as_admin(other, keys)
    copy_record(other, state, from_version="1.0", to_version="1.0")


def _another_version(state: SiteState, keys: Keys, tmp: Path) -> None:
    sign_as_admin(state, keys, "1.1")
    copy_record(state, state, from_version="1.1", to_version="1.0")


def _another_build(state: SiteState, keys: Keys, tmp: Path) -> None:
    sign_as_admin(state, keys, digest=OTHER_DIGEST)


def _altered(state: SiteState, keys: Keys, tmp: Path) -> None:
    path = sign_as_admin(state, keys)
    path.write_bytes(path.read_bytes().replace(b"INC-42", b"INC-43"))


def _altered_into_garbage(state: SiteState, keys: Keys, tmp: Path) -> None:
    path = sign_as_admin(state, keys)
    path.write_bytes(path.read_bytes()[:-5])


def _unsigned(state: SiteState, keys: Keys, tmp: Path) -> None:
    signature_path(sign_as_admin(state, keys)).unlink()


def _untrusted_key(state: SiteState, keys: Keys, tmp: Path) -> None:
    """The stranger signs with the stock tool; the trust file does not list the key at all."""
    record = ActivationRecord("lab", "1.0", DIGEST, "2026-12-02T09:00:00Z", "me", ADMIN)
    path = record_path(state, "1.0")
    path.parent.mkdir(parents=True)
    path.write_bytes(record.to_bytes())
    subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-f", str(keys.stranger), "-n", NAMESPACE, str(path)], check=True
    )


def _bundle_key(state: SiteState, keys: Keys, tmp: Path) -> None:
    """The bundle signing key is trusted, but only for bundles: it cannot authorize a rollback."""
    record = ActivationRecord("lab", "1.0", DIGEST, "2026-12-02T09:00:00Z", "builder", "release@lab.example")
    path = record_path(state, "1.0")
    path.parent.mkdir(parents=True)
    path.write_bytes(record.to_bytes())
    subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-f", str(keys.release), "-n", NAMESPACE, str(path)], check=True
    )


def _who_is_someone_else(state: SiteState, keys: Keys, tmp: Path) -> None:
    """Signed by the admin's key, but claiming to be from another principal."""
    record = ActivationRecord("lab", "1.0", DIGEST, "2026-12-02T09:00:00Z", "not me", "root@lab.example")
    path = record_path(state, "1.0")
    path.parent.mkdir(parents=True)
    path.write_bytes(record.to_bytes())
    signature_path(path).write_text(
        signing.sign(record.to_bytes(), signing.load_private_key(keys.admin), NAMESPACE)
    )


def _nothing(state: SiteState, keys: Keys, tmp: Path) -> None:
    pass


HOSTILE: dict[str, tuple[Callable[[SiteState, Keys, Path], None], str, str]] = {
    "another site": (_another_site, "activation-site", "for site 'other', not 'lab'"),
    "another version": (_another_version, "activation-version", "authorizes version 1.1, not 1.0"),
    "another build": (_another_build, "activation-digest", OTHER_DIGEST),
    "altered": (_altered, "activation-tampered", "altered"),
    "altered into garbage": (_altered_into_garbage, "activation-tampered", "not JSON"),
    "unsigned": (_unsigned, "activation-unsigned", "no signature"),
    "untrusted key": (_untrusted_key, "activation-signer", "not trusted"),
    "bundle key": (_bundle_key, "activation-signer", "namespace 'aifactory-activation'"),
    "who is someone else": (_who_is_someone_else, "activation-signer", "root@lab.example"),
    "no record": (_nothing, "activation-missing", "no activation record"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_record_is_refused_naming_what_is_wrong(
    case: str, state: SiteState, keys: Keys, tmp_path: Path
) -> None:
    make, code, says = HOSTILE[case]
    make(state, keys, tmp_path)
    verdict = activation_allows(state, version="1.0", digest=DIGEST, trust=keys.trust, now=SIGNED)
    assert (verdict.allowed, verdict.code) == (False, code), verdict.message
    assert says in verdict.message


@pytest.mark.parametrize(
    ("checked", "code"),
    [
        (SIGNED + MAX_AGE + timedelta(seconds=1), "activation-expired"),
        (SIGNED - timedelta(minutes=10), "activation-future"),
    ],
)
def test_a_record_is_valid_only_near_when_it_was_signed(
    checked: datetime, code: str, state: SiteState, keys: Keys
) -> None:
    sign_as_admin(state, keys)
    assert activation_allows(
        state, version="1.0", digest=DIGEST, trust=keys.trust, now=SIGNED + MAX_AGE
    ).allowed
    verdict = activation_allows(state, version="1.0", digest=DIGEST, trust=keys.trust, now=checked)
    assert (verdict.allowed, verdict.code) == (False, code)
    assert "2026-12-02T09:00:00Z" in verdict.message


def test_only_a_key_trusted_for_activations_may_sign_one(state: SiteState, keys: Keys) -> None:
    for key in (keys.release, keys.stranger):
        with pytest.raises(ActivationError, match="not trusted for activations") as caught:
            sign_as_admin(state, keys, key=key)
        assert caught.value.code == "activation-signer"
    assert not record_path(state, "1.0").exists() and not state.operator_log.exists()


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"reason": ""}, "activation-reason"),
        ({"reason": "ok\n[fake] line"}, "activation-reason"),
        ({"reason": "x" * 501}, "activation-reason"),
        ({"digest": "sha256:../../etc"}, "activation-digest"),
        ({"version_in_record": "../../lab/bundle/current"}, "activation-version"),
        ({"version_in_record": "1.0\n"}, "activation-version"),
    ],
)
def test_hostile_requests_are_refused_before_anything_is_written(
    fields: dict[str, str], code: str, state: SiteState, keys: Keys
) -> None:
    with pytest.raises(ActivationError) as caught:
        sign_as_admin(state, keys, **fields)
    assert caught.value.code == code
    assert not state.path("lifecycle").exists() and not state.operator_log.exists()
