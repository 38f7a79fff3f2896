"""Host keys are checked on every deploy: ansible-runner turns Ansible's host key checking off unless
the environment says otherwise (it sets ANSIBLE_HOST_KEY_CHECKING=False), and Ansible then passes
`StrictHostKeyChecking=no`, with which ssh connects to a machine whose key changed. The deploy's
environment says otherwise. ansible-runner's own configuration code is what is checked here; the
lab's replace test (tests/pipeline/test_replace_lab.py) shows a deploy refusing a new machine."""

from __future__ import annotations

from pathlib import Path

from ansible_runner.config.runner import RunnerConfig

from aifactory.connection import Connection
from aifactory.deploy.runner import ansible_env


def _prepared(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    (tmp_path / "project").mkdir(exist_ok=True)
    (tmp_path / "project" / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    config = RunnerConfig(private_data_dir=str(tmp_path), playbook="site.yml", envvars=env)
    config.prepare()
    return dict(config.env)


def test_ansible_runner_keeps_host_key_checking_on_for_a_deploy(tmp_path: Path) -> None:
    env = ansible_env(Connection("this host"), tmp_path / "ansible.cfg", tmp_path)
    assert _prepared(tmp_path, env)["ANSIBLE_HOST_KEY_CHECKING"] == "True"


def test_without_it_ansible_runner_turns_checking_off(tmp_path: Path) -> None:
    """Why the variable is set: ansible-runner's default (if this fails, that default changed)."""
    assert _prepared(tmp_path, {})["ANSIBLE_HOST_KEY_CHECKING"] == "False"


def test_a_connection_cannot_turn_it_off(tmp_path: Path) -> None:
    loose = Connection("a site", env={"ANSIBLE_HOST_KEY_CHECKING": "False"})
    env = ansible_env(loose, tmp_path / "ansible.cfg", tmp_path)
    assert _prepared(tmp_path, env)["ANSIBLE_HOST_KEY_CHECKING"] == "True"
