"""The stages import one way: spec -> plan -> the stages that use a plan; nodes never need the control
host's code; nothing imports the CLI. Read from the source (AST), imports inside functions and
`importlib.import_module("...")` with a literal name included, so a late import cannot hide an edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "aifactory"

# Stage packages of aifactory/ that only code downstream of them may import.
DOWNSTREAM_OF_PLAN = (
    "policy",
    "provision",
    "bundle",
    "inventory",
    "deploy",
    "scheduler",
    "runtime",
    "trust",
    "audit",
    "pipeline",
    "cli",
    "lab",
    "loop",
    "lifecycle",
)
NOT_FOR_NODES = (
    "deploy",
    "lab",
    "provision",
    "bundle",
    "pipeline",
    "audit",
    "cli",
    "loop",
    "backup",
    "lifecycle",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every aifactory module a file names in an import (any depth) or an import_module literal."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return {name for name in found if name == "aifactory" or name.startswith("aifactory.")}


def sources(*packages: str) -> list[Path]:
    roots = [PACKAGE / package for package in packages] if packages else [PACKAGE]
    files: list[Path] = []
    for root in roots:
        files += [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
    return files


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module_name(path)} imports {imported}"
        for path in files
        for imported in imported_modules(path)
        if stage_of(imported) in forbidden
    )


def test_spec_and_plan_import_nothing_downstream() -> None:
    assert violations(sources("spec", "plan"), DOWNSTREAM_OF_PLAN) == []


def test_runtime_imports_nothing_of_the_control_hosts_stages() -> None:
    assert violations(sources("runtime"), NOT_FOR_NODES) == []


# The site's trust (aifactory/trust/): its verifying side runs on nodes beside the runtime; its issuing
# side (aifactory/trust/issuing/) mints tokens, signs the revocation list and runs the CA, and only the
# control host's code (the CLI, the pipeline, the scheduler's submit) may import it.
ISSUING = "aifactory.trust.issuing"


def node_sources() -> list[Path]:
    """The code that runs on nodes: the runtime and the verifying side of trust."""
    issuing = PACKAGE / "trust" / "issuing"
    trust = [path for path in sources("trust") if issuing not in path.parents]
    return sources("runtime") + trust


def issuing_imports(files: list[Path]) -> list[str]:
    return sorted(
        f"{module_name(path)} imports {imported}"
        for path in files
        for imported in imported_modules(path)
        if imported == ISSUING or imported.startswith(f"{ISSUING}.")
    )


def test_node_code_never_imports_the_issuing_side_of_trust() -> None:
    files = node_sources()
    assert any(module_name(path) == "aifactory.trust.tokens" for path in files)
    assert not any(module_name(path).startswith(ISSUING) for path in files)
    assert issuing_imports(files) == []


def test_trust_imports_nothing_of_the_control_hosts_stages_nor_the_runtime() -> None:
    assert violations(sources("trust"), (*NOT_FOR_NODES, "runtime", "scheduler")) == []


def test_the_issuing_rule_sees_an_import_of_the_issuing_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "aifactory" / "runtime" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from aifactory.trust.issuing import tokens\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", tmp_path / "aifactory")
    assert issuing_imports([fake]) == [
        "aifactory.runtime.probe imports aifactory.trust.issuing",
        "aifactory.runtime.probe imports aifactory.trust.issuing.tokens",
    ]


def test_nothing_outside_the_cli_imports_the_cli() -> None:
    outside = [path for path in sources() if stage_of(module_name(path)) != "cli"]
    assert violations(outside, ("cli",)) == []


def test_policy_backends_never_import_the_engine_that_loads_them() -> None:
    backends = sources("policy/backend.py", "policy/regorus_backend.py", "policy/opa_backend.py")
    assert not [
        f"{module_name(path)} imports {name}"
        for path in backends
        for name in imported_modules(path)
        if name == "aifactory.policy.engine"
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import aifactory.lab\n", {"aifactory.lab"}),
        (
            "def f():\n    from aifactory.deploy import runner\n",
            {"aifactory.deploy", "aifactory.deploy.runner"},
        ),
        ("import importlib\nm = importlib.import_module('aifactory.cli.main')\n", {"aifactory.cli.main"}),
        ("from . import model\n", {"aifactory.plan", "aifactory.plan.model"}),
        ("from ..lab import access\n", {"aifactory.lab", "aifactory.lab.access"}),
        ("import json\n", set()),
    ],
)
def test_the_import_reader_sees_late_relative_and_importlib_imports(
    tmp_path: Path, source: str, expected: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "aifactory" / "plan" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", tmp_path / "aifactory")
    assert imported_modules(fake) == expected


# Only the edges choose the lab: the CLI, `aifactory up` (pipeline) and the lab package itself. The
# stages take a Connection (aifactory/connection.py) and never ask whether the hosts are a lab.
MAY_IMPORT_THE_LAB = ("cli", "pipeline", "lab")


def test_only_the_cli_and_the_pipeline_import_the_lab() -> None:
    stages = [path for path in sources() if stage_of(module_name(path)) not in MAY_IMPORT_THE_LAB]
    assert stages, "no production modules found"
    assert violations(stages, ("lab",)) == []


def test_the_lab_rule_sees_an_importlib_import_of_the_lab(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "aifactory" / "deploy" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        "import importlib\n\ndef f():\n    return importlib.import_module('aifactory.lab.execute')\n"
    )
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", tmp_path / "aifactory")
    assert violations([fake], ("lab",)) == ["aifactory.deploy.probe imports aifactory.lab.execute"]
