"""Anti-rollback with a signed activation record: an older bundle is imported only when the admin
signed a record for exactly that site, version and build (aifactory.lifecycle.activation); the check
then compares with the newest version ever imported, not the one in use, so a rollback does not open
the door to every version in between. The admin's key is made by the stock ssh-keygen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aifactory import signing
from aifactory.bundle import import_bundle, verify_bundle
from aifactory.bundle.import_record import last_import, newest_import
from aifactory.cli.main import main
from aifactory.errors import BundleError
from aifactory.lifecycle.activation import authorize
from aifactory.state import SiteState

from .conftest import ADMIN, SmallBundle
from .test_tamper import codes, refusal


def digest_of(bundle: Path, trust: Path) -> str:
    digest = verify_bundle(bundle, trust=trust, check_rollback=False).digest
    assert digest is not None
    return digest


def test_an_authorized_older_version_is_imported_and_cited(
    small_bundle: SmallBundle, admin: tuple[Path, Path], tmp_path: Path
) -> None:
    key, trust = admin
    state = SiteState.for_site("tamperlab", home=tmp_path / "state")
    home = tmp_path / "home"
    import_bundle(small_bundle(version="2.9"), trust=trust, site_state=state, home=home)
    import_bundle(small_bundle(version="2.10"), trust=trust, site_state=state, home=home)
    older = small_bundle(version="2.9")  # the same build of 2.9 again (same files, same stamp)
    assert codes(refusal(older, trust, state)) == {"rollback"}
    verdict = authorize(
        state,
        version="2.9",
        digest=digest_of(older, trust),
        reason="INC-7: 2.10 fails its health gate",
        key=signing.load_private_key(key),
        trust=trust,
    )
    assert verdict.allowed
    imported = import_bundle(older, trust=trust, site_state=state, home=home)
    assert imported.version == "2.9" and (home / "tamperlab" / "current").readlink() == Path("2.9")
    current, newest = last_import(state), newest_import(state)
    assert current is not None and newest is not None
    assert (current.version, newest.version) == ("2.9", "2.10")
    logged = json.loads(state.operator_log.read_text().splitlines()[-1])
    assert (logged["command"], logged["result"]) == ("bundle import", "ok")
    assert logged["detail"]["activation"]["sha256"] == verdict.sha256
    assert logged["detail"]["activation"]["who"] == ADMIN
    # Anti-rollback still holds against 2.10, the newest: an unauthorized 2.8 is refused naming it.
    error = refusal(small_bundle(version="2.8"), trust, state)
    assert codes(error) == {"rollback"} and "older than 2.10" in error.problems[0].message
    # Going forward again needs nothing.
    assert (
        import_bundle(small_bundle(version="2.10"), trust=trust, site_state=state, home=home).version
        == "2.10"
    )


def test_a_record_for_another_build_of_that_version_is_refused(
    small_bundle: SmallBundle, admin: tuple[Path, Path], tmp_path: Path
) -> None:
    key, trust = admin
    state = SiteState.for_site("tamperlab", home=tmp_path / "state")
    import_bundle(small_bundle(version="5"), trust=trust, site_state=state, home=tmp_path / "home")
    authorize(
        state,
        version="4",
        digest=digest_of(small_bundle(version="4"), trust),
        reason="back to 4",
        key=signing.load_private_key(key),
        trust=trust,
    )
    rebuilt = small_bundle(version="4", files={"plan.json": b'{"site": "tamperlab", "rebuilt": true}\n'})
    with pytest.raises(BundleError) as caught:
        import_bundle(rebuilt, trust=trust, site_state=state, home=tmp_path / "home")
    assert codes(caught.value) == {"activation-digest"}
    assert "another build of that version" in caught.value.problems[0].message
    assert (tmp_path / "home" / "tamperlab" / "current").readlink() == Path("5")


def test_the_cli_authorizes_checks_and_imports(
    small_bundle: SmallBundle,
    admin: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, trust = admin
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))
    home = ["--home", str(tmp_path / "home")]
    for version in ("7.0", "7.1"):
        assert (
            main(["bundle", "import", str(small_bundle(version=version)), "--trust", str(trust), *home]) == 0
        )
    capsys.readouterr()
    target = ["tamperlab", "--to", "7.0", "--trust", str(trust)]
    assert main(["activation", "check", *target]) == 1
    assert "error[activation-missing]" in capsys.readouterr().err
    reason = ["--reason", "INC-9: 7.1 drops requests", "--key", str(key)]
    assert main(["activation", "authorize", *target, *reason]) == 0  # the digest: from 7.0's import
    out = capsys.readouterr().out
    assert f"version 7.0 authorized for site tamperlab by {ADMIN}" in out and "valid until" in out
    assert main(["activation", "check", *target, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["allowed"] is True
    assert main(["bundle", "import", str(small_bundle(version="7.0")), "--trust", str(trust), *home]) == 0
    capsys.readouterr()
    assert main(["versions", "tamperlab", "--format", "json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in history["imported"]] == ["7.0", "7.1"]
    assert (history["current"]["version"], history["newest"]["version"]) == ("7.0", "7.1")
    assert main(["versions", "tamperlab"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "site tamperlab" and table[3].startswith("7.0      current")
    assert table[4].startswith("7.1      newest")
    assert main(["activation", "check", "tamperlab", "--to", "6.0", "--trust", str(trust)]) == 2
    assert "version 6.0 was never imported for site tamperlab (imported: 7.0, 7.1)" in capsys.readouterr().err
