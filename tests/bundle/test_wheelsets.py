"""Which wheels a site needs: one runtime set per pool platform, one control set, pins applied.

No download here: these tests check what would be asked of pip (the lab bundle test downloads)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from aifactory.bundle.build import site_wheelsets
from aifactory.bundle.wheelhouse import Platform, apply_pins, lock_file, locked_versions, wheel_requirements
from aifactory.errors import BundleError
from aifactory.plan import plan_site

from .conftest import LAB_SITE, REPO

METADATA = """Metadata-Version: 2.3
Name: aifactory
Version: 0.1.0
Requires-Dist: pyyaml>=6.0
Requires-Dist: tomli>=2; python_version < "3.11"
Requires-Dist: ansible-core==2.19.14; extra == "control"
Requires-Dist: torch>=2.4; extra == "runtime"
Requires-Dist: numpy>=1.26; extra == "runtime"
Requires-Dist: pytest>=8; extra == "dev"
"""


@pytest.fixture
def own_wheel(tmp_path: Path) -> Path:
    """A wheel with just the metadata that matters: core, control, runtime and dev requirements."""
    wheel = tmp_path / "aifactory-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("aifactory-0.1.0.dist-info/METADATA", METADATA)
    return wheel


def test_requirements_follow_the_extra_and_the_target_python(own_wheel: Path) -> None:
    assert wheel_requirements(own_wheel, "runtime", python="3.11") == [
        "numpy>=1.26",
        "pyyaml>=6.0",
        "torch>=2.4",
    ]
    assert wheel_requirements(own_wheel, "control", python="3.10") == [
        "ansible-core==2.19.14",
        "pyyaml>=6.0",
        "tomli>=2",
    ]


def test_pins_replace_direct_requirements_only() -> None:
    assert apply_pins(["torch>=2.4", "pyyaml>=6.0"], ["torch==2.13.0+cpu", "nvidia-nccl-cu12==2.21"]) == (
        "pyyaml>=6.0",
        "torch==2.13.0+cpu",
    )


def test_each_pool_platform_gets_its_runtime_set_and_the_control_host_its_own(
    own_wheel: Path, tmp_path: Path
) -> None:
    spec = yaml.safe_load((REPO / LAB_SITE).read_text())
    next(p for p in spec["node_pools"] if p["name"] == "cpu")["platform"] = {"arch": "aarch64"}
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(REPO / LAB_SITE.with_suffix(".alloc.json"), tmp_path / "site.alloc.json")
    planned = plan_site(tmp_path / "site.yaml", write_lock=False)
    sets = {(s.name, s.platform.tag): s for s in site_wheelsets(planned, own_wheel, ["torch==2.13.0"])}
    assert set(sets) == {("runtime", "debian-12-aarch64-py3.11"), ("control", "debian-12-x86_64-py3.11")}
    assert sets["runtime", "debian-12-aarch64-py3.11"].requirements == (
        "numpy>=1.26",
        "pyyaml>=6.0",
        "torch==2.13.0",
    )
    assert "torch==2.13.0" not in sets["control", "debian-12-x86_64-py3.11"].requirements
    arguments = sets["runtime", "debian-12-aarch64-py3.11"].platform.pip_arguments()
    assert "manylinux_2_36_aarch64" in arguments and "manylinux_2_17_aarch64" in arguments
    assert "manylinux_2_37_aarch64" not in arguments  # Debian 12 has glibc 2.36
    assert arguments[arguments.index("--abi") + 1] == "cp311"


def test_an_unknown_os_is_refused_with_the_supported_ones() -> None:
    with pytest.raises(BundleError) as caught:
        Platform("windows-11", "x86_64", "3.11").pip_arguments()
    assert caught.value.code == "unknown-platform" and "debian-12" in (caught.value.hint or "")


def test_every_wheel_set_resolves_under_the_lock_except_the_build_pins(own_wheel: Path) -> None:
    planned = plan_site(LAB_SITE)
    sets = site_wheelsets(planned, own_wheel, ["torch==2.13.0+cpu"])
    lock = lock_file()
    assert lock == REPO / "requirements.lock"
    expected = locked_versions(lock, except_for=["torch==2.13.0+cpu"])
    assert sets and all(wheelset.constraints == expected for wheelset in sets)
    assert "ansible-core==2.19.14" in expected
    assert not any(line.startswith("torch==") for line in expected)  # the pin decides torch
    # the constraints are part of what the cached set is keyed by
    unlocked = [type(s)(s.name, s.platform, s.requirements) for s in sets]
    assert {s.cache_key() for s in sets}.isdisjoint(u.cache_key() for u in unlocked)


def test_lock_lines_are_read_with_hashes_and_comments_dropped(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# header\nPyYAML==6.0.4 \\\n    --hash=sha256:ab \\\n    --hash=sha256:cd\n    # via aifactory\n"
        "torch==2.13.0+cpu \\\n    --hash=sha256:ef\n"
    )
    assert locked_versions(lock) == ("pyyaml==6.0.4", "torch==2.13.0+cpu")
    assert locked_versions(lock, except_for=["torch==2.14.1"]) == ("pyyaml==6.0.4",)
    lock.write_text("not a requirement at all ===\n")
    with pytest.raises(BundleError, match="cannot read the lock line") as caught:
        locked_versions(lock)
    assert caught.value.location.line == 1


def test_the_installed_environment_is_the_lock() -> None:
    """setup.sh installs from requirements.lock: every locked package is installed at its version
    (fails when the lock and pyproject.toml drift apart, or setup installed around the lock)."""
    from importlib import metadata

    from packaging.utils import canonicalize_name

    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = [
        f"{line} (installed: {installed.get(line.split('==')[0], 'nothing')})"
        for line in locked_versions(REPO / "requirements.lock")
        if installed.get(line.split("==")[0]) != line.split("==")[1]
    ]
    assert not wrong, (
        "installed packages differ from requirements.lock; run ./scripts/setup.sh:\n" + "\n".join(wrong)
    )
