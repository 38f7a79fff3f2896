"""House rules that a reviewer would otherwise have to check by eye, read from the package's source."""

from __future__ import annotations

import ast
import builtins
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


# --- one error root -------------------------------------------------------------------------------

ERRORS_MODULE = PACKAGE / "errors.py"
ROOT = "AifactoryError"


@dataclass(frozen=True)
class ClassDef:
    file: Path
    line: int
    name: str
    bases: tuple[str, ...]  # the last part of each base's name: `yaml.YAMLError` -> "YAMLError"

    def where(self) -> str:
        return f"{self.file.relative_to(PACKAGE.parent)}:{self.line} {self.name}"


def _class_defs(path: Path) -> list[ClassDef]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ClassDef):
            bases = tuple(
                base.attr if isinstance(base, ast.Attribute) else base.id
                for base in node.bases
                if isinstance(base, ast.Attribute | ast.Name)
            )
            found.append(ClassDef(path, node.lineno, node.name, bases))
    return found


def _is_builtin_exception(name: str) -> bool:
    value = getattr(builtins, name, None)
    return isinstance(value, type) and issubclass(value, BaseException)


def _exception_classes(classes: list[ClassDef]) -> tuple[set[str], set[str]]:
    """(names of exception classes, names of those under AifactoryError), by bases' names, to a fixed
    point: a base from a library counts when its name says it is an error (`YAMLError`, `...Exception`)."""
    exceptions: set[str] = set()
    rooted: set[str] = {ROOT}
    changed = True
    while changed:
        changed = False
        for cls in classes:
            is_exception = any(
                _is_builtin_exception(b) or b in exceptions or b.endswith(("Error", "Exception"))
                for b in cls.bases
            )
            if is_exception and cls.name not in exceptions:
                exceptions.add(cls.name)
                changed = True
            if any(b in rooted for b in cls.bases) and cls.name not in rooted:
                rooted.add(cls.name)
                changed = True
    return exceptions, rooted


def _stray_exceptions(classes: list[ClassDef]) -> list[str]:
    """Exception classes defined outside errors.py. Allowed only: a private class (`_Name`) under
    AifactoryError, for control flow inside one module (a bound crossed in PyYAML's callbacks, a
    refusal out of httptools' callbacks) that the module turns into something else before a command
    sees it; its docstring says so."""
    exceptions, rooted = _exception_classes(classes)
    return [
        cls.where()
        for cls in classes
        if cls.file != ERRORS_MODULE
        and cls.name in exceptions
        and not (cls.name.startswith("_") and cls.name in rooted)
    ]


def test_every_exception_class_lives_in_errors_py_under_the_root() -> None:
    classes = [cls for path in sorted(PACKAGE.rglob("*.py")) for cls in _class_defs(path)]
    assert not _stray_exceptions(classes), (
        "exception classes outside aifactory/errors.py (move them there, under AifactoryError with "
        f"their exit code): {_stray_exceptions(classes)}"
    )
    exceptions, rooted = _exception_classes(classes)
    in_errors = {cls.name for cls in classes if cls.file == ERRORS_MODULE and cls.name in exceptions}
    assert in_errors and in_errors <= rooted, f"not under {ROOT}: {sorted(in_errors - rooted)}"


def test_the_exception_finder_sees_direct_and_indirect_ones(tmp_path: Path) -> None:
    """The finder itself, on a module that breaks the rule in each way and keeps it in the one allowed way."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import yaml\n"
        "class Plain(Exception): ...\n"
        "class Indirect(Plain): ...\n"
        "class FromLibrary(yaml.YAMLError): ...\n"
        "class Public(AifactoryError): ...\n"
        "class _Internal(AifactoryError): ...\n"
        "class _Hidden(ValueError): ...\n"
        "class NotAnError(dict): ...\n"
    )
    stray = [where.rsplit(" ", 1)[1] for where in _stray_exceptions(_class_defs_anywhere(sample))]
    assert stray == ["Plain", "Indirect", "FromLibrary", "Public", "_Hidden"]


def _class_defs_anywhere(path: Path) -> list[ClassDef]:
    return [ClassDef(PACKAGE / "sample.py", c.line, c.name, c.bases) for c in _class_defs(path)]
