"""The runtime_id deploy gives the roles (aifactory.deploy.imported_bundle.runtime_identity): a digest
of the signed manifest's wheels by name and RECORD (what each installs), so a bundle that differs
only in its plan, its apt repository, its version's name or its wheels' zip timestamps (aifactory's
own wheel is rebuilt with each bundle) installs the same runtime, which the runtime role keeps
(tests/bundle/test_runtime_tree.py); any changed file in a wheel is another runtime."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path
from typing import Any

from aifactory.deploy.imported_bundle import runtime_identity

NAMES = ("aifactory-0.1.0-py3-none-any.whl", "torch-2.13.0-cp311-none-linux_x86_64.whl")


def _wheel(path: Path, body: str, *, stamp: tuple[int, ...] = (2026, 1, 1, 0, 0, 0)) -> None:
    """A wheel whose one module says `body`, its RECORD naming that module's hash (as pip writes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    package = path.name.split("-")[0]
    info = f"{package}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(zipfile.ZipInfo(f"{package}/__init__.py", stamp), body)
        digest = base64.urlsafe_b64encode(hashlib.sha256(body.encode()).digest()).rstrip(b"=").decode()
        record = f"{package}/__init__.py,sha256={digest},{len(body)}\n{info}/RECORD,,\n"
        archive.writestr(zipfile.ZipInfo(f"{info}/RECORD", stamp), record)


def _bundle(root: Path, bodies: dict[str, str], *extra: str, **stamp: Any) -> dict[str, Any]:
    for name, body in bodies.items():
        _wheel(root / "wheels" / name, body, **stamp)
    files = [f"wheels/{name}" for name in bodies] + list(extra)
    return {"version": "1.0.0", "files": [{"path": p, "sha256": "0" * 64} for p in files]}


def test_a_plan_apt_or_timestamp_change_keeps_the_runtime_id(tmp_path: Path) -> None:
    bodies = {NAMES[0]: "one = 1\n", NAMES[1]: "two = 2\n"}
    first = runtime_identity(_bundle(tmp_path / "a", bodies, "plan.json"), tmp_path / "a")
    later = _bundle(tmp_path / "b", bodies, "plan.json", "apt/Packages", stamp=(2026, 6, 1, 12, 0, 0))
    assert (tmp_path / "a" / "wheels" / NAMES[0]).read_bytes() != (
        tmp_path / "b" / "wheels" / NAMES[0]
    ).read_bytes()
    assert first.startswith("sha256:") and runtime_identity(later, tmp_path / "b") == first


def test_a_changed_file_or_another_wheel_is_another_runtime(tmp_path: Path) -> None:
    same = runtime_identity(
        _bundle(tmp_path / "a", {NAMES[0]: "one = 1\n", NAMES[1]: "two = 2\n"}), tmp_path / "a"
    )
    changed = _bundle(tmp_path / "b", {NAMES[0]: "one = 1\n", NAMES[1]: "two = 3\n"})
    fewer = _bundle(tmp_path / "c", {NAMES[0]: "one = 1\n"})
    assert runtime_identity(changed, tmp_path / "b") != same
    assert runtime_identity(fewer, tmp_path / "c") != same


def test_no_wheels_or_an_unreadable_wheel_means_no_reuse(tmp_path: Path) -> None:
    assert runtime_identity({"files": [{"path": "plan.json", "sha256": "0" * 64}]}, tmp_path) == ""
    manifest = _bundle(tmp_path, {NAMES[0]: "one = 1\n"})
    (tmp_path / "wheels" / NAMES[0]).write_bytes(b"not a zip")
    assert runtime_identity(manifest, tmp_path) == ""
    manifest["files"].append({"path": "wheels/missing-1.0-py3-none-any.whl", "sha256": "0" * 64})
    assert runtime_identity(manifest, tmp_path) == ""
