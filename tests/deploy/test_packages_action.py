"""The collection's action aifactory.factory.aifactory_packages: a role's packages installed with apt,
or, on a host whose packages are preinstalled, checked with dpkg-query, in one task.

Real ansible-playbook runs (local connection) of the action against this machine's dpkg database:
`dpkg` and `coreutils` are installed on every Debian machine, AIFACTORY_ABSENT on none. The install
branch is ansible-core's apt module; this test runs it only in check mode (it must not install
anything on the machine running the suite), under the suite's Python, which has no python3-apt: apt
then refuses check mode without installing its bindings, which shows the task reached apt and apt
kept check mode. The lab's deploys (tests/deploy/test_deploy_lab.py and the rest) run the check
branch for every role's packages.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from local_playbook import action_task, run_local_playbook

AIFACTORY_ABSENT = "aifactory-no-such-package"

HOSTILE_NAMES = ["Dpkg", "-h", "a b", "a;touch {canary}", "../x", "$(touch {canary})", "x", "a\nb", ""]


_task = partial(action_task, "aifactory.factory.aifactory_packages")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("packages-action")
    canary = folder / "canary"
    preinstalled = {"aifactory_packages_preinstalled": True}
    hostile = [name.format(canary=canary) for name in HOSTILE_NAMES]
    tasks = [
        _task("present", {"names": ["dpkg", "coreutils"]}),
        _task("one_missing", {"names": ["dpkg", AIFACTORY_ABSENT]}),
        _task("told_preinstalled", {"names": ["dpkg"], "preinstalled": True}),
        _task("empty", {"names": []}),
        *[_task(f"hostile_{i}", {"names": ["dpkg", name]}) for i, name in enumerate(hostile)],
    ]
    run = run_local_playbook(folder, "run", tasks, preinstalled)
    check = run_local_playbook(
        folder,
        "check",
        [_task("present", {"names": ["coreutils"]}), _task("one_missing", {"names": [AIFACTORY_ABSENT]})],
        preinstalled,
        "--check",
    )
    install = run_local_playbook(
        folder,
        "install",
        [
            _task("installed", {"names": ["dpkg"]}),
            _task("told", {"names": ["dpkg"], "preinstalled": False}),
            _task("unknown", {"names": [AIFACTORY_ABSENT]}),
        ],
        {"aifactory_packages_preinstalled": "false"},
        "--check",
    )
    return {"run": run, "check": check, "install": install, "canary": canary, "hostile": hostile}


def test_preinstalled_packages_are_checked_and_change_nothing(site: dict[str, Any]) -> None:
    present = site["run"]["present"]
    assert not present.get("failed") and present["changed"] is False
    assert present["packages"] == ["dpkg", "coreutils"] and present["preinstalled"] is True
    # Told by the task itself, whatever the host says.
    assert not site["run"]["told_preinstalled"].get("failed")


def test_a_missing_preinstalled_package_fails_the_task_naming_it(site: dict[str, Any]) -> None:
    missing = site["run"]["one_missing"]
    assert missing["failed"] is True and missing["changed"] is False
    assert missing["missing"] == [AIFACTORY_ABSENT]
    assert f"not installed on this host: {AIFACTORY_ABSENT}" in missing["msg"]
    assert "aifactory_packages_preinstalled" in missing["msg"]


def test_check_mode_still_checks_preinstalled_packages(site: dict[str, Any]) -> None:
    assert not site["check"]["present"].get("failed") and site["check"]["present"]["changed"] is False
    assert site["check"]["one_missing"]["failed"] is True
    assert site["check"]["one_missing"]["missing"] == [AIFACTORY_ABSENT]


def test_an_empty_list_is_refused(site: dict[str, Any]) -> None:
    assert site["run"]["empty"]["failed"] is True and "names is empty" in site["run"]["empty"]["msg"]


@pytest.mark.parametrize("index", range(len(HOSTILE_NAMES)))
def test_a_name_that_is_not_a_debian_package_name_is_refused_before_the_host_is_touched(
    site: dict[str, Any], index: int
) -> None:
    outcome = site["run"][f"hostile_{index}"]
    assert outcome["failed"] is True
    assert "is not a Debian package name" in outcome["msg"]
    assert "missing" not in outcome  # refused before dpkg-query ran
    assert not site["canary"].exists()


def test_packages_not_preinstalled_go_to_apt_which_keeps_check_mode(site: dict[str, Any]) -> None:
    for label in ("installed", "told"):
        outcome = site["install"][label]
        assert outcome["preinstalled"] is False and outcome["packages"] == ["dpkg"]
        assert not outcome.get("failed") and outcome["changed"] is False
        assert "cache_updated" in outcome  # apt's own result, not the dpkg-query check's
    unknown = site["install"]["unknown"]
    assert unknown["preinstalled"] is False and unknown["failed"] is True
    assert "missing" not in unknown  # apt's failure, not the preinstalled check's
    assert AIFACTORY_ABSENT in unknown["msg"], unknown["msg"]
