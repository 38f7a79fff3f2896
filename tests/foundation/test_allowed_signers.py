"""Differential test: aifactory's allowed_signers reader and verifier against the stock
`ssh-keygen -Y verify` (Debian's openssh-client) on the same signature, file, signer and time.

Each case is one allowed_signers text; both must give the same verdict. The hand-written cases also
state the verdict OpenSSH's documentation leads one to expect (so a reader and a tool that agree on
the wrong answer still fail); the generated ones (every principal field with every option field) are
checked for agreement only.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aifactory import signing
from aifactory.allowed_signers import AllowedSigners, parse_time

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")

NAMESPACE = "aifactory-bundle"
SIGNER = "bundle@lab"
VERIFY_AT = datetime(2026, 6, 15, 12, 0, 0, tzinfo=UTC)  # the fixed verify time (-Overify-time)
DATA = b"the signed manifest\n"
FAR_EAST = "AIF-14"  # a POSIX TZ of UTC+14 (no tz database needed): local times are read in it

_KEY = Ed25519PrivateKey.generate()
A = signing.public_key_line(_KEY.public_key())  # the signer's key
B = signing.public_key_line(Ed25519PrivateKey.generate().public_key())  # someone else's
R = (
    rsa.generate_private_key(public_exponent=65537, key_size=2048)
    .public_key()
    .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    .decode()
)


@dataclass(frozen=True)
class Case:
    name: str
    text: str
    expected: bool | None  # None: generated, agreement only
    principal: str = SIGNER
    namespace: str = NAMESPACE
    at: datetime | None = VERIFY_AT  # None: now, as ssh-keygen without -Overify-time
    tz: str | None = None


def _relative(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y%m%d%H%M%SZ")


def _hand_written() -> list[Case]:
    p = SIGNER
    cases = [
        # lines, comments, blanks, separators
        Case("plain", f"{p} {A}\n", True),
        Case("other principal", f"other@lab {A}\n", False),
        Case("other key", f"{p} {B}\n", False),
        Case("trailing comment", f"{p} {A} the signer's key\n", True),
        Case("comment and blank lines", f"# trust\n\n   \n{p} {A}\n", True),
        Case("leading blanks", f"  \t {p} {A}\n", True),
        Case("commented out", f"#{p} {A}\n", False),
        Case("indented comment", f"   # {p} {A}\n", False),
        Case("no final newline", f"{p} {A}", True),
        Case("tab separated", f"{p}\t{A.replace(' ', chr(9))}\n", True),
        Case("crlf", f"# x\r\n{p} {A}\r\n", True),
        Case("second line", f"other@lab {A}\n{p} {A}\n", True),
        Case("first line other key", f"{p} {B}\n{p} {A}\n", True),
        Case("empty file", "", False),
        Case("short key type name", f"{p} ED25519 {A.split()[1]}\n", None),
        Case("tab before key", f'{p} namespaces="{NAMESPACE}"\t{A}\n', True),
        Case("blank options then key", f"{p}    {A}\n", True),
        Case("nul ends the line", f"{p} {A}\0junk\n", True),
        Case("nul inside principals", f"bundle\0@lab {A}\n", False),
        # principal lists and patterns
        Case("principal list", f"other@lab,{p} {A}\n", True),
        Case("star domain", f"*@lab {A}\n", True),
        Case("question mark", f"bundle@la? {A}\n", True),
        Case("question mark too short", f"bundle@lab? {A}\n", False),
        Case("star alone", f"* {A}\n", True),
        Case("negated first", f"!{p},*@lab {A}\n", False),
        Case("negated last", f"*@lab,!{p} {A}\n", False),
        Case("negated other", f"!other@lab,*@lab {A}\n", True),
        Case("only negation", f"!other@lab {A}\n", False),
        Case("case matters", f"BUNDLE@lab {A}\n", False),
        Case("quoted principals", f'"{p}" {A}\n', True),
        Case("quoted list", f'"other@lab,{p}" {A}\n', True),
        Case("quoted with space", f'"other lab,{p}" {A}\n', True),
        Case("unmatched quote", f'bun"dle@lab {A}\n', False),
        Case("empty list item", f"other@lab,,{p} {A}\n", True),
        Case("prefix is not a match", f"bundle {A}\n", False),
        # namespaces
        Case("namespace", f'{p} namespaces="{NAMESPACE}" {A}\n', True),
        Case("other namespace", f'{p} namespaces="aifactory-audit" {A}\n', False),
        Case("namespace list", f'{p} namespaces="aifactory-audit,{NAMESPACE}" {A}\n', True),
        Case("namespace pattern", f'{p} namespaces="aifactory-*" {A}\n', True),
        Case("namespace negated", f'{p} namespaces="*,!{NAMESPACE}" {A}\n', False),
        Case("namespace unquoted", f"{p} namespaces={NAMESPACE} {A}\n", False),
        Case("namespace upper-case option", f'{p} NAMESPACES="{NAMESPACE}" {A}\n', True),
        Case("namespace empty", f'{p} namespaces="" {A}\n', False),
        Case("namespace twice", f'{p} namespaces="{NAMESPACE}",namespaces="x" {A}\n', False),
        Case("namespace quoted space", f'{p} namespaces="a b,{NAMESPACE}" {A}\n', True),
        Case("namespace escaped quote", f'{p} namespaces="{NAMESPACE},\\"x\\"" {A}\n', True),
        Case("namespace unterminated", f'{p} namespaces="{NAMESPACE} {A}\n', False),
        Case("options trailing comma", f'{p} namespaces="{NAMESPACE}", {A}\n', False),
        Case("wrong namespace then right", f'{p} namespaces="x" {A}\n{p} {A}\n', True),
        Case("verify namespace differs", f"{p} {A}\n", False, namespace="aifactory-audit"),
        # malformed lines: reaching one stops the search
        Case("unknown option alone", f"{p} bogus-option {A}\n", False),
        Case("unknown option skipped", f"{p} bogus-option {A}\n{p} {A}\n", True),
        Case("unknown option of another principal", f"other@lab bogus {A}\n{p} {A}\n", True),
        Case("principals only", f"{p}\n{p} {A}\n", True),
        Case("principals only, last line", f"{p} {A}\nother@lab", True),
        Case("bad base64", f"{p} ssh-ed25519 !!!notbase64\n", False),
        Case("type does not match blob", f"{p} ssh-rsa {A.split()[1]}\n", False),
        Case("truncated key", f"{p} ssh-ed25519 {A.split()[1][:40]}\n", False),
        Case("rsa key", f"{p} {R}\n", False),
        Case("rsa key then ours", f"{p} {R}\n{p} {A}\n", True),
        # cert-authority: aifactory has no certificates; such a line never grants a plain key
        Case("cert-authority", f"{p} cert-authority {A}\n", False),
        Case("cert-authority then plain", f"{p} cert-authority {A}\n{p} {A}\n", True),
        Case("cert-authority with namespaces", f'{p} cert-authority,namespaces="{NAMESPACE}" {A}\n', False),
        Case("namespaces then cert-authority", f'{p} namespaces="{NAMESPACE}",cert-authority {A}\n', False),
        Case("cert-authority upper case", f"{p} CERT-AUTHORITY {A}\n", False),
        Case("cert-authority glued", f"{p} cert-authorityx {A}\n", False),
        # validity windows against the fixed verify time 2026-06-15T12:00:00Z
        Case("expired 2020", f'{p} valid-before="20200101" {A}\n', False),
        Case("valid since 2020", f'{p} valid-after="20200101" {A}\n', True),
        Case("valid until 2030", f'{p} valid-before="20300101Z" {A}\n', True),
        Case("not yet valid", f'{p} valid-after="20300101Z" {A}\n', False),
        Case("after equals now", f'{p} valid-after="20260615120000Z" {A}\n', True),
        Case("before equals now", f'{p} valid-before="20260615120000Z" {A}\n', True),
        Case("before a second ago", f'{p} valid-before="20260615115959Z" {A}\n', False),
        Case("after in a second", f'{p} valid-after="20260615120001Z" {A}\n', False),
        Case("minutes form", f'{p} valid-after="202606151200Z" {A}\n', True),
        Case("utc suffix", f'{p} valid-before="20260615115959UTC" {A}\n', False),
        Case("utc suffix lower case", f'{p} valid-before="20260615120000utc" {A}\n', True),
        Case("ten digits", f'{p} valid-before="2030010112" {A}\n', False),
        Case("month thirteen", f'{p} valid-before="20301301" {A}\n', False),
        Case("february 31 carries over", f'{p} valid-after="20260231Z" {A}\n', True),
        Case("the epoch is no time", f'{p} valid-after="19700101Z" {A}\n', False),
        Case("window", f'{p} valid-after="20200101",valid-before="20300101" {A}\n', True),
        Case(
            "empty window", f'{p} valid-after="20260615120000Z",valid-before="20260615120000Z" {A}\n', False
        ),
        Case("window twice", f'{p} valid-after="20200101",valid-after="20210101" {A}\n', False),
        Case("single quotes", f"{p} valid-before='20300101Z' {A}\n", False),
        Case("option names in any case", f'{p} Valid-Before="20300101Z" {A}\n', True),
        Case("expired then plain", f'{p} valid-before="20200101Z" {A}\n{p} {A}\n', True),
        Case(
            "all options",
            f'other@lab,{p} namespaces="aifactory-audit,{NAMESPACE}",valid-after="20260101Z",'
            f'valid-before="20270101Z" {A} comment\n',
            True,
        ),
        # local times (no Z) are read in the local zone: UTC+14 here
        Case("local day, far east", f'{p} valid-after="20260616" {A}\n', True, tz=FAR_EAST),
        Case("local day, utc", f'{p} valid-after="20260616" {A}\n', False, tz="UTC0"),
        Case("local minute, far east", f'{p} valid-before="202606160159" {A}\n', False, tz=FAR_EAST),
        # the current time, as ssh-keygen uses without -Overify-time
        Case(
            "now inside window",
            f'{p} valid-after="{_relative(-2)}",valid-before="{_relative(2)}" {A}\n',
            True,
            at=None,
        ),
        Case("now expired", f'{p} valid-before="{_relative(-1)}" {A}\n', False, at=None),
        Case("now not yet", f'{p} valid-after="{_relative(2)}" {A}\n', False, at=None),
    ]
    return cases


_PRINCIPAL_FIELDS = [
    SIGNER,
    "*@lab",
    "!bundle@lab,*",
    '"x@lab,bundle@*"',
    "b?ndle@lab,other",
    "other@lab",
]
_OPTION_FIELDS = [
    "",
    f'namespaces="{NAMESPACE}"',
    'namespaces="aifactory-log,aifactory-token"',
    'valid-before="20250101Z"',
    'valid-after="20260615120000Z",valid-before="20260615120000Z"',
    'valid-after="20260101",namespaces="*-bundle"',
    "cert-authority",
    'namespaces="aifactory-bundle"junk',
]


def _generated() -> Iterator[Case]:
    for number, (principals, options) in enumerate(itertools.product(_PRINCIPAL_FIELDS, _OPTION_FIELDS)):
        line = " ".join(part for part in (principals, options, A) if part)
        preamble = "# generated\n\n" if number % 3 == 0 else ""
        tail = f"\n{SIGNER} {B}\n" if number % 2 else "\n"
        yield Case(f"generated {number}: {principals} {options}", preamble + line + tail, None)


CASES = _hand_written() + list(_generated())


def _ssh_keygen_accepts(case: Case, folder: Path) -> bool:
    (folder / "allowed_signers").write_text(case.text)
    argv = ["ssh-keygen", "-Y", "verify", "-f", str(folder / "allowed_signers"), "-I", case.principal]
    argv += ["-n", case.namespace, "-s", str(folder / "data.sig")]
    if case.at is not None:
        argv.append("-Overify-time=" + case.at.strftime("%Y%m%d%H%M%SZ"))
    done = subprocess.run(argv, input=DATA, capture_output=True, check=False, timeout=30)
    return done.returncode == 0


def _ours_accepts(case: Case, folder: Path) -> bool:
    armored = (folder / "data.sig").read_text()
    try:
        signing.verify(
            DATA,
            armored,
            allowed_signers=folder / "allowed_signers",
            namespace=case.namespace,
            principal=case.principal,
            at=case.at,
        )
    except signing.SignatureError:
        return False
    return True


@pytest.fixture
def signed(tmp_path: Path) -> Path:
    (tmp_path / "data.sig").write_text(signing.sign(DATA, _KEY, NAMESPACE))
    return tmp_path


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield
    monkeypatch.undo()
    time.tzset()


def test_the_corpus_is_large_and_mixed() -> None:
    assert len(CASES) >= 60
    expected = [c.expected for c in CASES if c.expected is not None]
    assert expected.count(True) >= 20 and expected.count(False) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_same_verdict_as_ssh_keygen(
    case: Case, signed: Path, zone: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if case.tz is not None:
        monkeypatch.setenv("TZ", case.tz)
        time.tzset()
    theirs = _ssh_keygen_accepts(case, signed)
    ours = _ours_accepts(case, signed)
    assert ours == theirs, f"aifactory {'accepts' if ours else 'refuses'}, ssh-keygen does not:\n{case.text}"
    if case.expected is not None:
        assert theirs == case.expected, f"both {'accept' if theirs else 'refuse'}, unlike OpenSSH's rules"


def test_find_principal_names_a_signer_ssh_keygen_accepts(signed: Path) -> None:
    text = f'# site\n!bundle@lab,*@lab namespaces="{NAMESPACE}" {A}\nops@lab,*-x {A}\n'
    (signed / "allowed_signers").write_text(text)
    found = AllowedSigners.read(signed / "allowed_signers").find_principal(
        _KEY.public_key(), namespace=NAMESPACE, at=int(VERIFY_AT.timestamp())
    )
    assert found.principal == "ops@lab" and found.line == 2  # *@lab on line 2 grants it
    assert _ssh_keygen_accepts(Case("found", text, True, principal=found.principal), signed)


def test_refusals_say_why(signed: Path) -> None:
    messages = {}
    for name, line in {
        "ca": f"{SIGNER} cert-authority {A}",
        "expired": f'{SIGNER} valid-before="20200101Z" {A}',
        "namespace": f'{SIGNER} namespaces="aifactory-audit" {A}',
        "skipped": f"{SIGNER} no-such-option {A}",
        "principal": f"ops@lab {A}",
    }.items():
        signers = AllowedSigners.parse(line + "\n", source="trust")
        with pytest.raises(signing.SignerUntrusted) as caught:
            signers.check(_KEY.public_key(), principal=SIGNER, namespace=NAMESPACE, at=VERIFY_AT)
        messages[name] = caught.value.message
    assert "aifactory does not support certificates" in messages["ca"]
    assert "expired at 2020-01-01T00:00:00Z" in messages["expired"]
    assert "namespace 'aifactory-bundle' is not in" in messages["namespace"]
    assert "line 1 cannot be read" in messages["skipped"] and "unsupported option" in messages["skipped"]
    assert "lists the key for ops@lab" in messages["principal"]


def test_time_forms() -> None:
    assert parse_time("20260615Z") == int(datetime(2026, 6, 15, tzinfo=UTC).timestamp())
    assert parse_time("202606151230Z") == int(datetime(2026, 6, 15, 12, 30, tzinfo=UTC).timestamp())
    assert parse_time("20260615123005UTC") == int(datetime(2026, 6, 15, 12, 30, 5, tzinfo=UTC).timestamp())
    for bad in ("2026061", "2026-06-15", "20261315Z", "20260615246000Z", "x0260615", "Z"):
        assert parse_time(bad) is None, bad
