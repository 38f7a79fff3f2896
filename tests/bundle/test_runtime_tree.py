"""The prebuilt runtime tree (aifactory/bundle/runtime_tree.py, the runtime role's tasks/tree.yml):

- a tree made from a small wheel written here (a module and a console script: what makes it
  interesting is the script's shebang, which names the folder the tree was built for) comes out
  byte for byte the same from two builds, names the build's staging folder nowhere, and runs at
  its target after stock `tar` extracts it;
- the runtime role's install tasks (real ansible-playbook, local connection) extract it, check every
  file, write the install record, and change nothing the second time; check mode writes nothing; a
  tree whose archive does not match its signed listing, or that was built for another Python, is
  refused and nothing of it stays;
- the lab site's real bundle built with --runtime-tree lists the tree in the signed manifest and the
  SBOM, and the tree runs `import aifactory, torch` and `aifactory-serve --help` (slow: it installs
  torch once, like a host used to).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from ansible_env import ansible_env

from aifactory.bundle import BuildOptions, build_bundle
from aifactory.bundle import runtime_tree as rt
from aifactory.bundle.wheelhouse import Platform
from aifactory.deploy.settings import MITOGEN_STRATEGY, mitogen_strategy_dir
from aifactory.errors import BundleError
from aifactory.plan import plan_site
from tests.bundle.conftest import LAB_SITE, STAMP, Extras, Signer, lab_options

ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
VERSION = "20261201.1"
HOSTS_PYTHON = rt.probe_interpreter(rt.DEFAULT_PYTHON)
PLATFORM = Platform("debian-12", HOSTS_PYTHON.machine, HOSTS_PYTHON.minor)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(folder: Path) -> Path:
    """treehello 1.0: a module and the console script `treehello`, which prints where it runs from."""
    files = {
        "treehello/__init__.py": b"import sys\n\ndef main():\n    print('hello from', sys.prefix)\n",
        "treehello-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: treehello\nVersion: 1.0\n",
        "treehello-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
        "treehello-1.0.dist-info/entry_points.txt": b"[console_scripts]\ntreehello = treehello:main\n",
    }
    record = "".join(_record_line(name, data) + "\n" for name, data in files.items())
    record += "treehello-1.0.dist-info/RECORD,,\n"
    wheel = folder / "treehello-1.0-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in [*files.items(), ("treehello-1.0.dist-info/RECORD", record.encode())]:
            archive.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data)
    return wheel


def small_tree(work: Path, target: Path) -> rt.RuntimeTree:
    return rt.build_tree(
        interpreter=HOSTS_PYTHON,
        platform=PLATFORM,
        wheels=[make_wheel(work / "wheel")],
        requirements=["treehello"],
        target=str(target),
        work=work / "tree",
        timestamp=STAMP,
    )


def extract(tree: rt.RuntimeTree, target: Path) -> None:
    target.mkdir(parents=True)
    subprocess.run(["tar", "--zstd", "-xf", str(tree.archive), "-C", str(target)], check=True)


def test_two_builds_give_the_same_bytes_and_the_tree_runs_where_it_was_built_for(tmp_path: Path) -> None:
    target = tmp_path / "opt" / VERSION
    first = small_tree(tmp_path / "one", target)
    second = small_tree(tmp_path / "two", target)
    assert first.archive.read_bytes() == second.archive.read_bytes()
    assert first.listing.read_bytes() == second.listing.read_bytes()
    assert first.archive.name == hashlib.sha256(first.archive.read_bytes()).hexdigest() + ".tar.zst"
    assert first.python == HOSTS_PYTHON.version
    assert ("treehello", "1.0") in first.packages
    with _opened(first.archive) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted((m.name for m in members), key=str.encode)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(STAMP, 0, 0, "", "")}
    assert not any(m.pax_headers for m in members)
    staging = str(tmp_path / "one" / "tree" / "staging")
    extract(first, target)
    for path in target.rglob("*"):
        if path.is_symlink():
            assert staging not in os.readlink(path)
        elif path.is_file():
            assert staging.encode() not in path.read_bytes(), path
    script = target / "bin" / "treehello"
    assert script.read_text().splitlines()[0] == f"#!{target}/bin/python"
    done = subprocess.run([str(script)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"hello from {target}"
    listed = {line[66:] for line in first.listing.read_text().splitlines()}
    assert "bin/treehello" in listed and "pyvenv.cfg" in listed


def _opened(archive: Path) -> tarfile.TarFile:
    raw = subprocess.run(["zstd", "-d", "-q", "-c", str(archive)], capture_output=True, check=True).stdout
    return tarfile.open(fileobj=io.BytesIO(raw))


def test_a_tree_is_not_built_for_another_platform(tmp_path: Path) -> None:
    other = Platform("debian-12", HOSTS_PYTHON.machine, "3.99")
    with pytest.raises(BundleError) as caught:
        rt.require_matches(HOSTS_PYTHON, other)
    assert caught.value.code == "runtime-tree-platform"
    assert HOSTS_PYTHON.version in caught.value.message and other.tag in caught.value.message


# ------------------------------------------------------------------------------------ the role

PLAYBOOK = """
- name: The runtime role's install tasks, as site.yml's play runs them
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Install the runtime
      ansible.builtin.include_role:
        name: runtime
        tasks_from: install.yml
"""


# site.yml's order: the tree started right after the bundle role, other roles' work, then awaited.
PLAYBOOK_STARTED_EARLY = """
- name: The runtime role's start and install tasks with other work between them, as site.yml runs them
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Start the tree in the background
      ansible.builtin.include_role:
        name: runtime
        tasks_from: start.yml
    - name: The extraction is not awaited yet (what the host's configuration does meanwhile)
      ansible.builtin.async_status:
        jid: "{{ runtime_tree_job.ansible_job_id }}"
      register: meanwhile
      when: runtime_tree_job.ansible_job_id is defined
    - name: Install the runtime
      ansible.builtin.include_role:
        name: runtime
        tasks_from: install.yml
"""


def _run_install(
    folder: Path,
    overrides: dict[str, Any],
    *,
    check: bool = False,
    playbook_text: str = PLAYBOOK,
    strategy: str = "linear",
) -> subprocess.CompletedProcess[str]:
    playbook = folder / "install.yml"
    playbook.write_text(playbook_text)
    extra = {
        "ansible_python_interpreter": sys.executable,
        "runtime_version": VERSION,
        "runtime_bundle_digest": "sha256:" + "b" * 64,
        "runtime_wheelhouse": str(folder / "no-wheelhouse"),
        "runtime_plan_source": str(folder / "no-plan.json"),
        **overrides,
    }
    env = ansible_env(folder)
    if strategy == MITOGEN_STRATEGY:
        plugins = mitogen_strategy_dir()
        assert plugins is not None, "ansible_mitogen is a dependency (pyproject.toml)"
        env |= {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": strategy}
    argv = [ANSIBLE_PLAYBOOK, "-i", "localhost,", "-c", "local", str(playbook), "-e", json.dumps(extra)]
    if check:
        argv.append("--check")
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)


def _changed(done: subprocess.CompletedProcess[str]) -> int:
    found = re.search(r"changed=(\d+)", done.stdout)
    assert found, done.stdout[-3000:]
    return int(found.group(1))


def _role_inputs(tmp_path: Path, tree: rt.RuntimeTree, *, python: str | None = None) -> dict[str, Any]:
    """The bundle folder on the host (archive and listing at their payload paths) and runtime_tree."""
    bundle_dir = tmp_path / "bundle"
    (bundle_dir / rt.PAYLOAD_DIR).mkdir(parents=True, exist_ok=True)
    for source, path in ((tree.archive, tree.archive_path), (tree.listing, tree.listing_path)):
        (bundle_dir / path).write_bytes(source.read_bytes())
    entry = tree.manifest_entry() | ({"python": python} if python else {})
    return {
        "runtime_root": str(tmp_path / "opt"),
        "runtime_bundle_dir": str(bundle_dir),
        "runtime_tree": entry,
    }


def test_the_role_extracts_and_checks_the_tree_once(tmp_path: Path) -> None:
    tree = small_tree(tmp_path / "build", tmp_path / "opt" / VERSION)
    inputs = _role_inputs(tmp_path, tree)
    checked = _run_install(tmp_path, inputs, check=True)
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert not (tmp_path / "opt" / VERSION).exists()
    first = _run_install(tmp_path, inputs)
    assert first.returncode == 0, first.stdout[-3000:]
    assert _changed(first) > 0
    record = json.loads((tmp_path / "opt" / VERSION / "aifactory-install.json").read_text())
    assert record["tree"] == tree.sha256 and {"name": "treehello", "version": "1.0"} in record["packages"]
    done = subprocess.run(
        [str(tmp_path / "opt" / VERSION / "bin" / "treehello")], capture_output=True, text=True
    )
    assert done.stdout.strip() == f"hello from {tmp_path / 'opt' / VERSION}"
    # The bundle's signed listing beside the version, what the daily check runs stock sha256sum with.
    listing = tmp_path / "opt" / f"{VERSION}.sha256"
    assert listing.read_bytes() == tree.listing.read_bytes()
    sha256sum = ["sha256sum", "--check", "--strict", "--quiet", str(listing)]
    assert subprocess.run(sha256sum, cwd=tmp_path / "opt" / VERSION, check=False).returncode == 0
    second = _run_install(tmp_path, inputs)
    assert second.returncode == 0 and _changed(second) == 0, second.stdout[-3000:]


def _leftovers(tmp_path: Path) -> list[str]:
    """What is in the versions' folder besides the installed versions: staging folders."""
    root = tmp_path / "opt"
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".")) if root.is_dir() else []


@pytest.mark.parametrize("strategy", ["linear", MITOGEN_STRATEGY])
def test_the_tree_started_early_is_awaited_and_an_earlier_runs_staging_is_removed(
    strategy: str, tmp_path: Path
) -> None:
    """site.yml's order (start.yml after the bundle role, install.yml after the other roles): the
    background job extracts and checks, the install awaits it and writes the record; a staging
    folder a killed run left beside the version is removed, and the version's folder is made by
    one rename (no staging folder stays). With Ansible's strategy and with Mitogen's, which
    `aifactory deploy` uses: Mitogen runs an async job in a forked child, where importing a
    collection's module_utils hung (the job never finished) until the module stopped doing so."""
    tree = small_tree(tmp_path / "build", tmp_path / "opt" / VERSION)
    # a job that never finishes fails within a minute, not the role's half hour
    inputs = {**_role_inputs(tmp_path, tree), "runtime_tree_seconds": 60}
    stale = tmp_path / "opt" / f".{VERSION}.partial-killed"
    (stale / "bin").mkdir(parents=True)
    (stale / "bin" / "half-written").write_bytes(b"x")
    checked = _run_install(
        tmp_path, inputs, check=True, playbook_text=PLAYBOOK_STARTED_EARLY, strategy=strategy
    )
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert not (tmp_path / "opt" / VERSION).exists()
    first = _run_install(tmp_path, inputs, playbook_text=PLAYBOOK_STARTED_EARLY, strategy=strategy)
    assert first.returncode == 0, first.stdout[-3000:]
    assert "wait for the tree's extraction and check" in first.stdout
    record = json.loads((tmp_path / "opt" / VERSION / "aifactory-install.json").read_text())
    assert record["tree"] == tree.sha256
    assert _leftovers(tmp_path) == []
    assert (tmp_path / "opt" / VERSION).stat().st_mode & 0o7777 == 0o755
    done = subprocess.run(
        [str(tmp_path / "opt" / VERSION / "bin" / "treehello")], capture_output=True, text=True
    )
    assert done.stdout.strip() == f"hello from {tmp_path / 'opt' / VERSION}"
    second = _run_install(tmp_path, inputs, playbook_text=PLAYBOOK_STARTED_EARLY, strategy=strategy)
    assert second.returncode == 0 and _changed(second) == 0, second.stdout[-3000:]


def test_a_version_built_from_the_same_wheels_keeps_the_installed_runtime(tmp_path: Path) -> None:
    """A plan-only release (a resize's new bundle version): the same runtime_id and requirements, so
    the role keeps the runtime it has (no folder for the new version, nothing changed); a version
    with another runtime_id is installed under its own folder (here refused: the tree was built for
    the first version's folder, which is what the role checks before extracting)."""
    tree = small_tree(tmp_path / "build", tmp_path / "opt" / VERSION)
    inputs = {**_role_inputs(tmp_path, tree), "runtime_id": "sha256:" + "1" * 64}
    assert _run_install(tmp_path, inputs).returncode == 0
    record = (tmp_path / "opt" / VERSION / "aifactory-install.json").read_text()
    assert json.loads(record)["runtime_id"] == inputs["runtime_id"]
    plan_only = {**inputs, "runtime_version": "20261201.2", "runtime_bundle_digest": "sha256:" + "c" * 64}
    kept = _run_install(tmp_path, plan_only)
    assert kept.returncode == 0 and _changed(kept) == 0, kept.stdout[-3000:]
    assert not (tmp_path / "opt" / "20261201.2").exists()
    assert (tmp_path / "opt" / VERSION / "aifactory-install.json").read_text() == record
    other = {**plan_only, "runtime_id": "sha256:" + "2" * 64}
    refused = _run_install(tmp_path, other)
    assert refused.returncode != 0 and "the runtime goes to" in " ".join(refused.stdout.split())
    assert not (tmp_path / "opt" / "20261201.2").exists()


def test_the_role_refuses_a_tampered_tree_and_keeps_nothing(tmp_path: Path) -> None:
    tree = small_tree(tmp_path / "build", tmp_path / "opt" / VERSION)
    inputs = _role_inputs(tmp_path, tree)
    # the same tree with one byte of the module changed, under the signed name and beside the signed listing
    staging = tmp_path / "build" / "tree" / "staging" / VERSION
    module = next(staging.glob("lib/python*/site-packages/treehello/__init__.py"))
    module.write_bytes(module.read_bytes().replace(b"hello", b"HELLO"))
    rt.pack(staging, Path(inputs["runtime_bundle_dir"]) / tree.archive_path, timestamp=STAMP)
    done = _run_install(tmp_path, inputs)
    assert done.returncode != 0
    assert "did not install" in done.stdout and "FAILED" in done.stdout, done.stdout[-3000:]
    assert "digest differs" in " ".join(done.stdout.split()), done.stdout[-3000:]
    assert not (tmp_path / "opt" / VERSION).exists() and _leftovers(tmp_path) == []


def test_the_role_refuses_a_tree_with_a_file_its_listing_does_not_name(tmp_path: Path) -> None:
    tree = small_tree(tmp_path / "build", tmp_path / "opt" / VERSION)
    inputs = _role_inputs(tmp_path, tree)
    # every listed file intact, plus one the signed listing does not name
    staging = tmp_path / "build" / "tree" / "staging" / VERSION
    (staging / "bin" / "unlisted helper").write_bytes(b"#!/bin/sh\nid\n")
    rt.pack(staging, Path(inputs["runtime_bundle_dir"]) / tree.archive_path, timestamp=STAMP)
    done = _run_install(tmp_path, inputs)
    assert done.returncode != 0
    text = " ".join(done.stdout.split())
    assert "not in the bundle's signed listing" in text and "bin/unlisted helper" in text, text[-3000:]
    assert "did not install" in text
    assert not (tmp_path / "opt" / VERSION).exists() and _leftovers(tmp_path) == []


def test_the_role_refuses_a_tree_built_for_another_python(tmp_path: Path) -> None:
    tree = small_tree(tmp_path / "build", tmp_path / "opt" / VERSION)
    done = _run_install(tmp_path, _role_inputs(tmp_path, tree, python="3.99.1"))
    assert done.returncode != 0
    text = " ".join(done.stdout.split())
    assert "built with Python 3.99.1" in text and f"is Python {HOSTS_PYTHON.version}" in text, text[-3000:]
    assert not (tmp_path / "opt" / VERSION).exists()


# ------------------------------------------------------------------------------ the real bundle


@pytest.mark.slow
def test_the_lab_bundle_carries_a_runnable_signed_tree(
    tmp_path: Path, signer: Signer, source_snapshot: Path, extras: Extras
) -> None:
    root = tmp_path / "opt"
    options = lab_options(signer, source_snapshot, extras)
    options = BuildOptions(**{**options.__dict__, "runtime_trees": True, "runtime_root": str(root)})
    output = tmp_path / "lab.tar"
    result = build_bundle(
        plan_site(source_snapshot / LAB_SITE, write_lock=False), output=output, options=options
    )
    with tarfile.open(output) as bundle:
        manifest = json.loads(bundle.extractfile("manifest.json").read())  # type: ignore[union-attr]
        sbom = json.loads(bundle.extractfile("sbom.cdx.json").read())  # type: ignore[union-attr]
        trees = manifest["contents"]["runtime_trees"]
        assert list(trees) == [PLATFORM.tag]
        entry = trees[PLATFORM.tag]
        assert entry["python"] == HOSTS_PYTHON.version and entry["target"] == f"{root}/{result.version}"
        files = {f["path"]: f for f in manifest["files"]}
        assert files[entry["archive"]]["sha256"] == entry["sha256"] == entry["archive"][8:72]
        assert files[entry["archive"]]["kind"] == "runtime-tree" and entry["files"] in files
        listed = {c.get("name") for c in sbom["components"]} | {
            h["content"] for c in sbom["components"] for h in c.get("hashes", [])
        }
        assert entry["sha256"] in listed
        target = Path(entry["target"])
        target.mkdir(parents=True)
        bundle.extract(entry["archive"], tmp_path / "payload")
    subprocess.run(
        ["tar", "--zstd", "-xf", str(tmp_path / "payload" / entry["archive"]), "-C", str(target)], check=True
    )
    done = subprocess.run(
        [str(target / "bin" / "python"), "-c", "import aifactory, torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    served = subprocess.run(
        [str(target / "bin" / "aifactory-serve"), "--help"], capture_output=True, text=True
    )
    assert served.returncode == 0 and "usage" in served.stdout.lower(), served.stderr[-2000:]
