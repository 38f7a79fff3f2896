"""House rules that a reviewer would otherwise have to check by eye, read from the package's source."""

from __future__ import annotations

import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

import aifactory

PACKAGE = Path(aifactory.__file__).resolve().parent

# How many `# type: ignore[...]` the package may hold (issue 16 counted 16 when mypy --strict
# became a CI gate, and allowed a little room): a new one needs an old one gone, or a reviewer
# who raises this number on purpose.
MAX_TYPE_IGNORES = 18

_IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[^\]]*\])?(?P<rest>.*)$")


@dataclass(frozen=True)
class TypeIgnore:
    file: Path
    line: int
    codes: str | None  # "[arg-type]" or None for a bare ignore
    reason: str  # the comment that says why, on the same line after the codes or on the line above

    def where(self) -> str:
        return f"{self.file.relative_to(PACKAGE.parent)}:{self.line}"


def _type_ignores(path: Path) -> list[TypeIgnore]:
    """Every `type: ignore` in a comment (strings and docstrings that mention one do not count)."""
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        match = _IGNORE.search(token.string)
        if match is None:
            continue
        line = token.start[0]
        reason = match["rest"].strip().lstrip("#").strip()
        above = lines[line - 2].strip() if line >= 2 else ""
        if not reason and above.startswith("#"):
            reason = above.lstrip("#").strip()
        found.append(TypeIgnore(path, line, match["codes"], reason))
    return found


def _all_type_ignores() -> list[TypeIgnore]:
    return [ignore for path in sorted(PACKAGE.rglob("*.py")) for ignore in _type_ignores(path)]


def test_type_ignores_stay_few() -> None:
    ignores = _all_type_ignores()
    assert len(ignores) <= MAX_TYPE_IGNORES, (
        f"{len(ignores)} `type: ignore` comments in aifactory/ (at most {MAX_TYPE_IGNORES}): "
        + ", ".join(i.where() for i in ignores)
    )


def test_every_type_ignore_names_its_code_and_says_why() -> None:
    bare = [i.where() for i in _all_type_ignores() if not i.codes or i.codes == "[]"]
    unexplained = [i.where() for i in _all_type_ignores() if not i.reason]
    assert not bare, f"`type: ignore` without an error code: {bare}"
    assert not unexplained, (
        f"`type: ignore` without a reason comment (same line or the line above): {unexplained}"
    )


def test_the_type_ignore_reader_sees_what_it_must(tmp_path: Path) -> None:
    """The reader itself: a bare ignore, a coded one with and without a reason, and a string."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "a = 1  # type: ignore\n"
        "b = 2  # type: ignore[assignment]\n"
        "c = 3  # type: ignore[assignment]  # the library says so\n"
        "# the line above explains\n"
        "d = 4  # type: ignore[misc]\n"
        'e = "# type: ignore[misc]"\n'
    )
    found = {i.line: (i.codes, i.reason) for i in _type_ignores(sample)}
    assert found == {
        1: (None, ""),
        2: ("[assignment]", ""),
        3: ("[assignment]", "the library says so"),
        5: ("[misc]", "the line above explains"),
    }
