"""The roles' token checks take the whole value: a token with a trailing newline (which Python's `$`
lets through) is refused by the preflight, the same token without it passes.

One real ansible-playbook run, in check mode with the local connection: each case includes a role's
preflight with one value set, and records whether a preflight
refused it (the name of the task that failed) or every check passed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_env import ansible_env

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
DIGEST = "sha256:" + "a" * 64
BUNDLE = {
    "bundle_version": "20261201.221214",
    "bundle_digest": DIGEST,
    "bundle_identity": "release@site.example",
    "bundle_payload_prefixes": ["runtime/"],
}
RUNTIME = {
    "runtime_version": "20261201.221214",
    "runtime_bundle_digest": DIGEST,
    "runtime_serve_address": "10.0.0.1",
}
# (case, what the case includes, its benign variables, the variable given a trailing newline)
CASES = [
    ("bundle-version", "bundle", BUNDLE, "bundle_version"),
    ("bundle-digest", "bundle", BUNDLE, "bundle_digest"),
    ("runtime-version", "runtime", RUNTIME, "runtime_version"),
    ("runtime-digest", "runtime", RUNTIME, "runtime_bundle_digest"),
    ("gpu-driver-branch", "gpu", {"gpu_driver_branch": "560"}, "gpu_driver_branch"),
    ("root-mail-alias", "base", {"base_root_mail_alias": "soc@lab.example"}, "base_root_mail_alias"),
]


def _include(what: str) -> str:
    return f"ansible.builtin.include_role: {{name: {what}, tasks_from: preflight.yml}}"


def _case(name: str, what: str, variables: dict[str, object], out: Path) -> str:
    return f"""
    - name: Case {name}
      block:
        - name: Checks of {name}
          {_include(what)}
          vars: {json.dumps(variables)}
        - name: Passed {name}
          ansible.builtin.copy: {{content: passed, dest: "{out}/{name}", mode: "0644"}}
          check_mode: false
      rescue:
        - name: Refused {name}
          ansible.builtin.copy:
            content: "{{{{ ansible_failed_task.name }}}}"
            dest: "{out}/{name}"
            mode: "0644"
          check_mode: false
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("preflight-tokens")
    out = folder / "out"
    out.mkdir()
    tasks = ""
    for name, what, variables, hostile in CASES:
        tasks += _case(f"{name}-benign", what, variables, out)
        tasks += _case(f"{name}-newline", what, {**variables, hostile: f"{variables[hostile]}\n"}, out)
    playbook = folder / "preflights.yml"
    playbook.write_text(f"- name: Preflights\n  hosts: localhost\n  gather_facts: false\n  tasks:{tasks}")
    env = ansible_env(folder)
    argv = [ANSIBLE_PLAYBOOK, "-i", "localhost,", "-c", "local", "--check", str(playbook)]
    argv += ["-e", json.dumps({"ansible_python_interpreter": sys.executable})]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return {p.name: p.read_text() for p in out.iterdir()}


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_a_token_with_a_trailing_newline_is_refused_by_the_preflight(
    case: str, outcomes: dict[str, str]
) -> None:
    assert outcomes[f"{case}-benign"] == "passed"
    assert "preflight" in outcomes[f"{case}-newline"].lower(), outcomes[f"{case}-newline"]
