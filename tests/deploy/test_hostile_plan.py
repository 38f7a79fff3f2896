"""A plan with hostile strings, built directly (spec validation bypassed), through the inventory and
the roles' own templates with real Ansible: nothing is evaluated, nothing gains a line.

The strings go where a spec would put them (GPU model, storage endpoint and mount path, the site's
description) and so into the host's mounts and GPU description, and into an interface name (which
the spec's grammar keeps plain: this is the plan tampered with). Then:
- the inventory carries each as `!unsafe` and reads back as the same characters; the values held
  beside the inventory (.data/: the storage systems, the fabric rails) as JSON strings, which Ansible
  reads with a lookup and so never templates: a play sees the very same characters;
- Ansible renders the gpu role's templates (its defaults and templates, as the role does) and runs
  its check-mode `render_check.yml`: the model appears as a JSON string in the modprobe comment
  (literally, for a value without control characters), on the same number of lines as a benign
  model, and the canary file a `lookup('pipe', 'touch ...')` would create never appears;
- the storage_client role's preflight, as on a real host (where it writes mount units), refuses a
  mount path or endpoint that a unit file cannot hold, and passes the benign one.
No lab is needed: the hosts are reached with Ansible's local connection, writing to a scratch folder.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_env import ansible_env

from aifactory.inventory import build_inventory, write_inventory
from aifactory.inventory.render import load_inventory_yaml
from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "playbooks" / "roles"
GPU_SITE = Path(__file__).parent / "fixtures" / "gpu-site.yaml"
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
GPU_HOST = "gputest-h100-001"
BENIGN_MODEL = "H100-SXM5-80GB"


def hostile_values(canary: Path) -> dict[str, str]:
    return {
        "jinja-lookup": f"{{{{ lookup('pipe', 'touch {canary}') }}}}",
        "jinja-statement": f"{{% set x = lookup('pipe', 'touch {canary}') %}}",
        "jinja-comment": "{# hidden #}",
        "newline": "H100\ninstall nvidia /bin/sh -c 'touch " + str(canary) + "'",
        "escape": "\x1b[2J\x1b[31mH100",
        "nul": "H100\x00x",
        "command-substitution": f"$(touch {canary})",
        "backticks": f"`touch {canary}`",
        "semicolon": f"H100; touch {canary}",
        "exports-options": "/d *(rw,no_root_squash,insecure)",
    }


PLAYBOOK = """
- name: Render the gpu role's templates as the role does, into a scratch folder
  hosts: {host}
  gather_facts: false
  vars_files:
    - {roles}/gpu/defaults/main.yml
  tasks:
    - name: Nvidia.conf and dcgm.env from the role's templates
      ansible.builtin.template:
        src: "{roles}/gpu/templates/{{{{ item }}}}.j2"
        dest: "{out}/{{{{ item }}}}"
        mode: "0644"
      loop: [nvidia.conf, dcgm.env]
    - name: The values held beside the inventory, as a play sees them
      ansible.builtin.copy:
        content: "{{{{ item.value | to_json }}}}"
        dest: "{out}/{{{{ item.name }}}}"
        mode: "0644"
      loop:
        - {{name: fabric.json, value: "{{{{ aifactory_fabric_addresses }}}}"}}
        - {{name: storage.json, value: "{{{{ aifactory_storage }}}}"}}
      loop_control:
        label: "{{{{ item.name }}}}"
    - name: The role's own check-mode render
      ansible.builtin.include_role:
        name: gpu
        tasks_from: render_check.yml
    - name: The storage_client preflight, as on a real host
      block:
        - name: Preflight
          ansible.builtin.include_role:
            name: storage_client
            tasks_from: preflight.yml
          vars:
            storage_client_prepared: false
        - name: Passed
          ansible.builtin.copy:
            content: "passed"
            dest: "{out}/storage-preflight"
            mode: "0644"
      rescue:
        - name: Refused
          ansible.builtin.copy:
            content: "{{{{ ansible_failed_result.results | map(attribute='msg', default='') | join(' ') }}}}"
            dest: "{out}/storage-preflight"
            mode: "0644"
"""


@pytest.fixture(scope="module")
def gpu_plan() -> dict:
    return plan_site(GPU_SITE, write_lock=False).plan.to_dict()


def _hostile_plan(plan: dict, value: str) -> dict:
    """The plan with `value` wherever a spec's free-form strings land."""
    plan = copy.deepcopy(plan)
    plan["site"]["description"] = value
    for host in plan["hosts"]:
        if host.get("gpus"):
            host["gpus"]["model"] = value
        for mount in host.get("mounts", []):
            mount["path"] = "/lake" + value
            mount["source"] = "10.30.0.250:" + value
        if host["name"] == GPU_HOST:
            host["interfaces"][0]["name"] = "mgmt" + value  # the management rail
    for store in plan["storage"]:
        store["endpoint"] = "10.30.0.250:" + value
        store["mount_path"] = "/lake" + value
    return plan


def _run(plan: dict, folder: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    inventory, out = folder / "inventory", folder / "out"
    out.mkdir(parents=True)
    write_inventory(build_inventory(SitePlan.from_dict(plan)), inventory)
    playbook = folder / "render.yml"
    playbook.write_text(PLAYBOOK.format(host=GPU_HOST, roles=ROLES, out=out))
    env = ansible_env(folder)
    argv = [ANSIBLE_PLAYBOOK, "-i", str(inventory), "-c", "local", "--diff", str(playbook)]
    argv += ["-e", json.dumps({"ansible_python_interpreter": sys.executable})]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    return done, out


@pytest.fixture(scope="module")
def benign(gpu_plan: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    done, out = _run(gpu_plan, tmp_path_factory.mktemp("benign"))
    assert done.returncode == 0, done.stdout + done.stderr
    return {p.name: p.read_text() for p in out.iterdir()}


@pytest.mark.parametrize("what", list(hostile_values(Path("/x"))))
def test_hostile_strings_stay_data_through_the_inventory_and_the_roles(
    what: str, gpu_plan: dict, benign: dict[str, str], tmp_path: Path
) -> None:
    canary = tmp_path / "CANARY"
    value = hostile_values(canary)[what]
    done, out = _run(_hostile_plan(gpu_plan, value), tmp_path / "run")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert not canary.exists(), "a lookup ran"

    # The inventory: every plan string tagged, and read back as the very same characters.
    host_vars = (tmp_path / "run" / "inventory" / "host_vars" / f"{GPU_HOST}.yml").read_text()
    assert "model: !unsafe " in host_vars
    assert load_inventory_yaml(host_vars)["aifactory_gpus"]["model"] == value
    site_data = json.loads((tmp_path / "run" / "inventory" / ".data" / "site.json").read_text())
    assert site_data["aifactory_storage"][0]["endpoint"] == "10.30.0.250:" + value

    # What a play sees of the values held beside the inventory: the same characters, unevaluated.
    seen_storage = json.loads((out / "storage.json").read_text())
    assert seen_storage[0]["endpoint"] == "10.30.0.250:" + value
    seen_rails = json.loads((out / "fabric.json").read_text())
    assert seen_rails["mgmt"][0]["interface"] == "mgmt" + value

    # The gpu role's files: the model as one JSON string (the value itself when it holds no control
    # character), and not one line more than with the benign model.
    rendered = {p.name: p.read_text() for p in out.iterdir()}
    assert json.dumps(value) in rendered["nvidia.conf"]
    if value.isprintable():
        assert value in rendered["nvidia.conf"]
    for name in ("nvidia.conf", "dcgm.env"):
        assert len(rendered[name].splitlines()) == len(benign[name].splitlines()), rendered[name]
        assert rendered[name].replace(json.dumps(value), json.dumps(BENIGN_MODEL)) == benign[name]

    # The storage_client preflight refuses what a mount unit cannot hold (and passed the benign one).
    assert benign["storage-preflight"] == "passed"
    assert rendered["storage-preflight"].startswith("storage_client: ")
    assert "needs an absolute mount path" in rendered["storage-preflight"]
    assert not canary.exists()


def test_the_bundle_description_stays_plain_text(gpu_plan: dict, tmp_path: Path) -> None:
    """Ansible 2.19 turns an `!unsafe` string that looks like a number into a number when a template
    passes it on: the bundle's version (aifactory's own text, not the spec's) is written untagged."""
    inventory = build_inventory(
        SitePlan.from_dict(gpu_plan), bundle={"version": "20261201.221214", "digest": "sha256:" + "a" * 64}
    )
    write_inventory(inventory, tmp_path / "inv")
    text = (tmp_path / "inv" / "group_vars" / "all.yml").read_text()
    assert "version: '20261201.221214'" in text
    assert "aifactory_site: !unsafe 'gputest'" in text
