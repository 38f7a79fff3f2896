"""The secret store: round trip through the CLI, wrong passphrase, values never shown, resolution order."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from aifactory.errors import SecretError
from aifactory.secrets import STORE_FILE, SecretResolver, SecretStore, env_name

VALUE = "Tr0ub4dor&3-not-for-logs"


def _outputs(*results) -> str:
    return "".join(r.stdout + r.stderr for r in results)


def test_round_trip_through_the_cli(
    aifactory, cli_in_process, passphrase_file: Path, state_home: Path
) -> None:
    pw = ["--passphrase-file", str(passphrase_file)]
    stored = aifactory(
        "secret", "set", "lab", "secret://lab/bmc/{host}", *pw, input=VALUE + "\n"
    )  # a process
    aifactory = cli_in_process
    other = aifactory("secret", "set", "lab", "secret://lab/api", *pw, "--format", "json", input="x" * 40)
    listed = aifactory("secret", "list", "lab", *pw, "--format", "json")
    assert stored.returncode == other.returncode == listed.returncode == 0, _outputs(stored, other, listed)
    assert json.loads(listed.stdout)["references"] == ["secret://lab/api", "secret://lab/bmc/{host}"]

    store = state_home / "lab" / STORE_FILE
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    resolver = SecretResolver(store, str(passphrase_file))
    secret = resolver.resolve("secret://lab/bmc/{host}", host="lab-cpu-001")
    assert secret.value == VALUE  # the trailing newline of standard input is not part of it
    assert VALUE not in f"{secret} {secret!r}"

    removed = aifactory("secret", "remove", "lab", "secret://lab/api", *pw)
    again = aifactory("secret", "remove", "lab", "secret://lab/api", *pw)
    assert removed.returncode == 0 and again.returncode == 1 and "no stored value" in again.stderr
    listed = aifactory("secret", "list", "lab", *pw)
    assert listed.stdout.split() == ["secret://lab/bmc/{host}"]

    everything = _outputs(stored, other, listed, removed, again)
    for path in (state_home / "lab").iterdir():
        everything += path.read_bytes().decode(errors="replace")
    assert VALUE not in everything and "x" * 40 not in everything


def test_wrong_passphrase_is_a_clear_error(cli_in_process, passphrase_file: Path, tmp_path: Path) -> None:
    assert (
        cli_in_process(
            "secret", "set", "lab", "secret://lab/a", "--passphrase-file", str(passphrase_file), input=VALUE
        ).returncode
        == 0
    )
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase")
    listed = cli_in_process("secret", "list", "lab", "--passphrase-file", str(wrong))
    assert listed.returncode == 3
    assert "wrong passphrase or the file was altered" in listed.stderr
    assert "Traceback" not in listed.stderr and VALUE not in listed.stderr
    as_json = cli_in_process("secret", "list", "lab", "--passphrase-file", str(wrong), "--format", "json")
    error = json.loads(as_json.stdout)["error"]
    assert error["code"] == "secret" and error["exit_code"] == 3


def test_passphrase_is_never_a_command_line_argument(cli_in_process) -> None:
    result = cli_in_process("secret", "set", "lab", "secret://lab/a", "--passphrase", "hunter2", input=VALUE)
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr


def test_no_terminal_and_no_passphrase_file(cli_in_process) -> None:
    result = cli_in_process("secret", "set", "lab", "secret://lab/a", input=VALUE)
    assert result.returncode == 3 and "no terminal to ask on" in result.stderr


def test_bad_reference_is_refused_before_reading_the_value(cli_in_process, passphrase_file: Path) -> None:
    result = cli_in_process(
        "secret", "set", "lab", "bmc-password", "--passphrase-file", str(passphrase_file), input=VALUE
    )
    assert result.returncode == 2 and "is not a secret reference" in result.stderr


def test_secret_set_accepts_the_spec_file_and_records_its_digest(
    cli_in_process, passphrase_file: Path, state_home: Path
) -> None:
    spec = Path(__file__).resolve().parents[2] / "inventory" / "lab" / "site.yaml"
    result = cli_in_process(
        "secret", "set", str(spec), "secret://lab/a", "--passphrase-file", str(passphrase_file), input=VALUE
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((state_home / "lab" / "operator.log.jsonl").read_text())
    assert record["command"] == "secret set" and record["spec_digest"].startswith("sha256:")
    assert record["detail"] == {"reference": "secret://lab/a"}


def test_altered_store_is_detected(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / STORE_FILE, b"passphrase")
    store.set("secret://a", VALUE)
    blob = json.loads(store.path.read_text())
    sealed = bytearray(blob["ciphertext"].encode())
    sealed[5] = ord("A") if sealed[5] != ord("A") else ord("B")
    blob["ciphertext"] = sealed.decode()
    store.path.write_text(json.dumps(blob))
    with pytest.raises(SecretError, match="wrong passphrase or the file was altered"):
        store.references()


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / STORE_FILE
    passphrase = tmp_path / "pw"
    passphrase.write_text("pw")
    store = SecretStore(path, b"pw")
    store.set("secret://bmc/{host}", "shared")
    store.set("secret://bmc/node-002", "own")
    resolver = SecretResolver(path, str(passphrase))
    assert resolver.resolve("secret://bmc/{host}", host="node-001").value == "shared"
    assert resolver.resolve("secret://bmc/{host}", host="node-002").value == "own"
    monkeypatch.setenv(env_name("secret://bmc/node-002"), "from-env")
    assert env_name("secret://bmc/node-002") == "AIFACTORY_SECRET_BMC_NODE_002"
    assert resolver.resolve("secret://bmc/{host}", host="node-002").value == "from-env"
    with pytest.raises(SecretError, match="no value for secret://other") as raised:
        resolver.resolve("secret://other")
    assert "AIFACTORY_SECRET_OTHER" in (raised.value.hint or "")
    with pytest.raises(SecretError, match="needs a host"):
        resolver.resolve("secret://bmc/{host}")


@pytest.mark.parametrize(
    "reference",
    [
        "secret://bmc/{{ lookup('pipe', 'id') }}",
        "secret://bmc/{{host}}",
        "secret://bmc/{%host%}",
        "secret://bmc/{#x#}",
        "secret://bmc/{x}",
        "secret://bmc/a\n",
        "secret://bmc/../x",
        "secret://bmc//x",
        "secret://" + "a" * 300,
    ],
    ids=[
        "lookup",
        "double-brace",
        "statement",
        "comment",
        "other-placeholder",
        "newline",
        "dotdot",
        "slashes",
        "long",
    ],
)
def test_a_reference_outside_the_spec_grammar_is_refused(reference: str, tmp_path: Path) -> None:
    """Braces other than `{host}` (so no template delimiter), a trailing newline, `..`, `//`."""
    store = SecretStore(tmp_path / STORE_FILE, b"pw")
    with pytest.raises(SecretError, match="is not a secret reference") as refused:
        store.set(reference, VALUE)
    assert "\n" not in refused.value.message
    with pytest.raises(SecretError, match="is not a secret reference"):
        SecretResolver(tmp_path / STORE_FILE).resolve(reference, host="node-001")
    store.set("secret://lab/bmc/{host}", VALUE)  # the spec's own form still passes
    assert store.references() == ["secret://lab/bmc/{host}"]
