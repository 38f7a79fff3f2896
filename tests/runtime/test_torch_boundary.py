"""Torch is a runtime dependency only: the CLI, `aifactory validate` and the torch-free runtime modules
never import it (a control host or an auditor's laptop has no torch)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "aifactory"
SPEC = PACKAGE.parent / "inventory" / "lab" / "site.yaml"
TORCH_FREE = (
    "aifactory.trust.tokens",
    "aifactory.trust.certs",
    "aifactory.trust.decisionlog",
    "aifactory.trust.authz",
    "aifactory.trust.issuing.tokens",
    "aifactory.trust.issuing.certs",
    "aifactory.runtime.handoff",
    "aifactory.runtime.http",
    "aifactory.runtime.limits",
    "aifactory.runtime.job",
    "aifactory.runtime.allocation",
    "aifactory.runtime.siteplan",
    "aifactory.runtime.metrics",
    "aifactory.runtime.dataset",
    "aifactory.runtime.train_cli",
    "aifactory.runtime.loadgen",
)


def _imports_torch(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "torch" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            return True
    return False


def test_nothing_outside_the_runtime_imports_torch() -> None:
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "runtime" not in p.relative_to(PACKAGE).parts and _imports_torch(p)
    ]
    assert offenders == []


def _torch_loaded_after(code: str) -> str:
    probe = f"import sys\n{code}\nprint('torch' in sys.modules)\n"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_aifactory_validate_does_not_import_torch() -> None:
    code = f"from aifactory.cli.main import main\nassert main(['validate', {str(SPEC)!r}]) == 0\n"
    assert _torch_loaded_after(code) == "False"


def test_the_torch_free_runtime_modules_stay_torch_free() -> None:
    code = "\n".join(f"import {name}" for name in TORCH_FREE)
    assert _torch_loaded_after(code) == "False"


def test_the_probe_can_see_torch() -> None:  # so the tests above can fail
    assert _torch_loaded_after("import aifactory.runtime.model") == "True"
