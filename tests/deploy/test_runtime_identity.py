"""The runtime_id deploy gives the roles (aifactory.deploy.imported_bundle.runtime_identity): the
digest of the signed manifest's wheels alone, so a bundle that differs only in its plan, its apt
repository or its version's name installs the same runtime (the runtime role keeps it: tests/bundle/
test_runtime_tree.py), and any changed wheel is another runtime."""

from __future__ import annotations

from typing import Any

from aifactory.deploy.imported_bundle import runtime_identity

WHEELS = [
    {"path": "wheels/aifactory-1.0-py3-none-any.whl", "sha256": "a" * 64},
    {"path": "wheels/torch-2.13.0-cp311-none-linux_x86_64.whl", "sha256": "b" * 64},
]


def _manifest(*extra: dict[str, str], wheels: list[dict[str, str]] = WHEELS) -> dict[str, Any]:
    return {"version": "1.0.0", "files": [*extra, *wheels]}


def test_a_plan_or_apt_change_keeps_the_runtime_id() -> None:
    first = runtime_identity(_manifest({"path": "plan.json", "sha256": "1" * 64}))
    resized = runtime_identity(
        {
            **_manifest(
                {"path": "plan.json", "sha256": "2" * 64}, {"path": "apt/Packages", "sha256": "3" * 64}
            ),
            "version": "1.0.1",
        }
    )
    assert first.startswith("sha256:") and first == resized


def test_the_order_of_the_manifest_does_not_matter() -> None:
    assert runtime_identity(_manifest(wheels=WHEELS[::-1])) == runtime_identity(_manifest())


def test_a_changed_wheel_or_a_renamed_one_is_another_runtime() -> None:
    changed = [WHEELS[0], {**WHEELS[1], "sha256": "c" * 64}]
    renamed = [WHEELS[0], {**WHEELS[1], "path": "wheels/torch-2.14.0-cp311-none-linux_x86_64.whl"}]
    same = runtime_identity(_manifest())
    assert runtime_identity(_manifest(wheels=changed)) != same
    assert runtime_identity(_manifest(wheels=renamed)) != same
    assert runtime_identity(_manifest(wheels=WHEELS[:1])) != same


def test_a_bundle_without_wheels_has_none() -> None:
    assert runtime_identity(_manifest({"path": "plan.json", "sha256": "1" * 64}, wheels=[])) == ""
