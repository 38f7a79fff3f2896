"""The contract's lexical rules and the bounds on hostile input: clear errors, never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from base_spec import BASE

from aifactory.spec import load_spec_text
from aifactory.spec.loader import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    "spec",
    [
        FIXTURES / "contract-example.yaml",
        ROOT / "inventory" / "lab" / "site.yaml",
        ROOT / "inventory" / "examples" / "national" / "site.yaml",
    ],
    ids=["contract-example", "lab", "national"],
)
def test_example_sites_validate(spec: Path, cli) -> None:
    code, out, err = cli("validate", str(spec), "--format", "json")
    assert code == 0, err + out
    assert json.loads(out)["valid"] is True


def test_norway_is_a_country_not_false() -> None:
    """YAML 1.1 reads `NO` as false; the spec reads it as Norway (and only true/false are booleans)."""
    text = (
        BASE.replace("jurisdiction: NG", "jurisdiction: NO")
        .replace("country: NG", "country: NO")
        .replace("region: NG-FC", "region: NO-03")
        .replace("residency: NG", "residency: NO")
        .replace("residency: ECOWAS", "residency: NORDIC")
        .replace("to: NG", "to: NO")
    )
    spec = load_spec_text(text).spec
    assert spec.site.jurisdiction == "NO"
    assert spec.datacenters[0].country == "NO"
    assert spec.access[1].to == "NO"


def test_extension_keys_are_ignored_anywhere() -> None:
    text = BASE.replace("site:\n", "x-owner: platform-team\nsite:\n  x-ticket: {id: 42, by: [a, b]}\n", 1)
    text = text.replace("    rails: 2\n", "    rails: 2\n    x-cabling: {plan: fat-tree}\n")
    plain = load_spec_text(BASE).spec
    extended = load_spec_text(text).spec
    assert extended == plain


def test_inline_secret_value_is_never_repeated(tmp_path: Path, cli) -> None:
    secret = "correct-horse-battery-staple-42"
    spec = tmp_path / "site.yaml"
    spec.write_text(
        BASE.replace("credentials: secret://bmc/{host}", f"credentials: {secret}").replace(
            "count: 4\n", "count: [4]\n"
        )
    )  # a second error beside it
    for fmt in ("text", "json"):
        code, out, err = cli("validate", str(spec), "--format", fmt)
        assert code == 1 and "inline secret" in out + err
        assert secret not in out + err


# --- hostile input -----------------------------------------------------------------------------


def _billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


# Each case names the phrase a clear error must contain; a tuple lists alternatives where either the
# project's own check or the YAML library's (whichever answers first) gives a clear message.
HOSTILE: dict[str, tuple[bytes, str | tuple[str, ...]]] = {
    "empty": (b"", "the file is empty"),
    "only-comments": (b"# nothing here\n\n# still nothing\n", "the file is empty"),
    "list-at-root": (b"- schema: aifactory.site/v1\n- site: {}\n", "a site spec is a mapping"),
    "scalar-at-root": (b"just a sentence\n", "a site spec is a mapping"),
    "binary-junk": (bytes(range(256)) * 8, "not UTF-8 text"),
    "nul-bytes": (b"schema: aifactory.site/v1\x00\x00\n", "not valid YAML"),
    "yaml-syntax": (b"site: {name: [unclosed\n", "not valid YAML"),
    "deep-nesting": (
        b"a: " + b"[" * (MAX_DEPTH + 10) + b"]" * (MAX_DEPTH + 10) + b"\n",
        f"nesting deeper than {MAX_DEPTH} levels",
    ),
    "very-deep-nesting": (
        b"[" * 200_000,
        # PyYAML >= 6.0.3 stops first with its own depth limit; either message is clear.
        (f"nesting deeper than {MAX_DEPTH} levels", "exceeded maximum nesting depth"),
    ),
    "deep-mappings": (
        "".join("  " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 5)).encode() + b"  " * 70 + b"v\n",
        f"nesting deeper than {MAX_DEPTH} levels",
    ),
    "alias-bomb": (_billion_laughs().encode(), f"more than {MAX_NODES:,} values after expanding aliases"),
    "python-object": (b"schema: !!python/object/apply:os.system ['true']\n", "unsupported YAML tag"),
    "merge-of-scalar": (b"base: &b 3\nsite:\n  <<: *b\n", "a merge key (<<) must name a mapping"),
    "non-string-key": (b"? [a, b]\n: 1\n", "a mapping key must be a plain string"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_gets_a_clear_error(name: str, tmp_path: Path, cli) -> None:
    content, phrase = HOSTILE[name]
    spec = tmp_path / "site.yaml"
    spec.write_bytes(content)
    code, out, err = cli("validate", str(spec))
    assert code == 1
    phrases = (phrase,) if isinstance(phrase, str) else phrase
    assert any(p in err for p in phrases), err
    assert err.startswith("error[") and str(spec) in err
    assert "Traceback" not in out + err


def test_file_over_the_size_bound_is_refused_unread(tmp_path: Path, cli) -> None:
    spec = tmp_path / "site.yaml"
    with spec.open("wb") as handle:
        handle.write(b"schema: aifactory.site/v1\n")
        handle.write(b"# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    assert spec.stat().st_size > MAX_FILE_BYTES
    code, out, err = cli("validate", str(spec), "--format", "json")
    assert code == 1
    assert json.loads(out)["error"]["code"] == "spec-too-large"
    assert "larger than 10 MB" in json.loads(out)["error"]["message"]


@pytest.mark.parametrize("target", ["missing.yaml", "."])
def test_missing_file_or_folder(target: str, tmp_path: Path, cli) -> None:
    code, _, err = cli("validate", str(tmp_path / target))
    assert code == 1 and ("no such file" in err or "is a folder" in err)


def test_hostile_input_through_the_installed_command(tmp_path: Path, run_aifactory) -> None:
    spec = tmp_path / "bomb.yaml"
    spec.write_text(_billion_laughs())
    result = run_aifactory("validate", str(spec))
    assert result.returncode == 1
    assert "values after expanding aliases" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_file_that_cannot_be_read(tmp_path: Path, cli) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    spec = tmp_path / "site.yaml"
    spec.write_text(BASE)
    spec.chmod(0)
    code, _, err = cli("validate", str(spec))
    assert code == 1 and "cannot read" in err


def test_validate_never_imports_torch(tmp_path: Path) -> None:
    """`aifactory validate` runs on any admin machine: the core must not pull in the node runtime."""
    import subprocess
    import sys

    probe = (
        "import sys; from aifactory.cli.main import main; code = main(['validate', sys.argv[1]]); "
        "heavy = [m for m in ('torch', 'ansible', 'pulumi') if m in sys.modules]; "
        "print(heavy); sys.exit(code or bool(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(ROOT / "inventory" / "lab" / "site.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
