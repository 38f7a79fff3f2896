"""`aifactory deploy --forks N`: how many hosts Ansible works on at once, written to the deploy's
ansible.cfg; a value outside 1..1000 is a usage error (exit 2) naming the option."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifactory.cli.main import build_parser, main
from aifactory.deploy import DeploySettings
from aifactory.deploy.settings import render_ansible_cfg


def test_forks_reach_the_ansible_configuration(tmp_path: Path) -> None:
    args = build_parser(["deploy", "site.yaml", "--forks", "200"]).parse_args(
        ["deploy", "site.yaml", "--forks", "200"]
    )
    assert args.forks == 200
    default = build_parser(["deploy", "site.yaml"]).parse_args(["deploy", "site.yaml"])
    assert default.forks == DeploySettings().forks
    cfg = render_ansible_cfg(DeploySettings(forks=args.forks), folder=tmp_path, base={})
    assert "forks = 200" in cfg.splitlines()


@pytest.mark.parametrize("value", ["0", "1001", "-3", "ten", "20; id"])
def test_forks_outside_the_range_are_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", "site.yaml", "--forks", value]) == 2
    err = capsys.readouterr().err
    assert "--forks" in err and "from 1 to 1000" in err and "Traceback" not in err
