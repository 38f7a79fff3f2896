"""The playbooks as the Ansible collection aifactory.factory, checked with the ecosystem's own tools as
its users would: built and installed as the bundle does (aifactory/bundle/collection.py, then the
stock `ansible-galaxy collection install`), then `ansible-doc` for its module and every role, and
ansible-lint's production profile on the installed collection. And running Ansible with
playbooks/ansible.cfg prints no configuration warning."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from aifactory.bundle import collection

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
BIN = Path(sys.executable).parent
ROLES = sorted(r.name for r in (PLAYBOOKS / "roles").iterdir() if r.is_dir())
MODULES = sorted(m.stem for m in (PLAYBOOKS / "plugins" / "modules").glob("*.py"))


def _env(home: Path, collections: Path | None = None) -> dict[str, str]:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "ANSIBLE_HOME": str(home / "ansible")}
    if collections is not None:
        env["ANSIBLE_COLLECTIONS_PATH"] = str(collections)
    return env


def _run(
    argv: list[str], *, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env, cwd=cwd, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collections path the built collection is installed into."""
    work = tmp_path_factory.mktemp("collection")
    _, tarball = collection.build(
        PLAYBOOKS, work / "out", version="1.0.0", timestamp=1_763_800_000, work=work
    )
    done = _run(
        [str(BIN / "ansible-galaxy"), "collection", "install", "-p", str(work / "installed"), str(tarball)],
        env=_env(work),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return work / "installed"


def test_galaxy_layout_in_the_source() -> None:
    runtime = yaml.safe_load((PLAYBOOKS / "meta" / "runtime.yml").read_text())
    assert runtime["requires_ansible"] == ">=2.19.0"
    assert (PLAYBOOKS / "plugins" / "modules" / "aifactory_host_state.py").is_file()
    assert not (PLAYBOOKS / "library").exists()
    for role in ROLES:
        assert (PLAYBOOKS / "roles" / role / "meta" / "argument_specs.yml").is_file(), role


def test_no_role_asks_whether_it_runs_in_the_lab() -> None:
    """Roles read what the hosts are (docs/architecture.md, the connection seam), never whether they
    are the lab's: no file of the collection names a lab variable, and no role has a `*_lab` option."""
    lab_variable = re.compile(r"\baifactory_lab\b|\b[a-z]+(?:_[a-z]+)*_lab\b\s*[:|}]")
    asking = [
        f"{path.relative_to(PLAYBOOKS)}:{number}: {line.strip()}"
        for path in sorted(PLAYBOOKS.rglob("*"))
        if path.is_file() and path.suffix in (".yml", ".yaml", ".j2", ".py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if lab_variable.search(line)
    ]
    assert asking == []


def _documentation(module: str) -> dict[str, Any]:
    source = (PLAYBOOKS / "plugins" / "modules" / f"{module}.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DOCUMENTATION":
            return dict(yaml.safe_load(ast.literal_eval(node.value)))
    raise AssertionError(f"{module} has no DOCUMENTATION")


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_of_each_module(module: str, installed: Path, tmp_path: Path) -> None:
    done = _run([str(BIN / "ansible-doc"), f"aifactory.factory.{module}"], env=_env(tmp_path, installed))
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    documented = _documentation(module)
    # the first sentence up to its first markup (ansible-doc renders C(x) its own way)
    assert " ".join(re.split(r"C\(|\(", documented["description"][0])[0].split()) in text
    assert f"plugins/modules/{module}.py" in text


@pytest.mark.parametrize("role", ROLES)
def test_ansible_doc_of_each_role(role: str, installed: Path, tmp_path: Path) -> None:
    done = _run(
        [str(BIN / "ansible-doc"), "-t", "role", f"aifactory.factory.{role}"], env=_env(tmp_path, installed)
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.replace("\x1b[1m", "").replace("\x1b[0m", "").split())
    specs = yaml.safe_load((PLAYBOOKS / "roles" / role / "meta" / "argument_specs.yml").read_text())
    main = specs["argument_specs"]["main"]
    assert f"ENTRY POINT: main - {' '.join(main['short_description'].split())}" in text
    for option in main["options"]:  # every documented input is shown
        assert option in text, option


@pytest.mark.slow
def test_ansible_lint_production_on_the_installed_collection(installed: Path, tmp_path: Path) -> None:
    root = installed / "ansible_collections" / "aifactory" / "factory"
    done = _run(
        [str(BIN / "ansible-lint"), "--profile", "production", "--offline", "--nocolor"],
        env=_env(tmp_path, installed),
        cwd=root,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in done.stdout + done.stderr


def test_ansible_cfg_gives_no_configuration_warning(installed: Path, tmp_path: Path) -> None:
    """Ansible run from playbooks/ (so with its ansible.cfg): its callbacks and fact cache load cleanly.
    Before, a callback of a collection not installed and a fact cache without a folder each warned.
    The roles' modules are the collection's (aifactory.factory.*): it is on the path, as `aifactory
    deploy` and an imported bundle put it."""
    env = {**_env(tmp_path, installed), "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}
    runs = [
        [str(BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local", "-m", "ansible.builtin.ping"],
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "--list-tasks", "site.yml"],
    ]
    for argv in runs:
        done = _run(argv, env=env, cwd=PLAYBOOKS)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "WARNING" not in done.stdout + done.stderr, done.stdout + done.stderr
