"""The base role's file integrity (AIDE) and root's mail alias, run by real Ansible with the local
connection into a scratch folder (no lab needed; AIDE from the machine, as scripts/setup.sh installs it).

- aide.yml writes the configuration the SCAP content's aide_build_database reads (`database=` and
  `database_out=` as file paths of `[a-z./]`), with each watched path escaped as a literal regex,
  builds the database once with real `aide --init` and makes it the operational one; a second run
  changes nothing, and a check-mode run on a fresh host writes nothing;
- mail_alias.yml writes `root: <address>` (the site's security contact), replacing an earlier root line;
- the preflight refuses a mail alias or a watched path that is not a plain token (a newline, Jinja,
  a space), and the site's contact reaches the role from the plan's inventory without being evaluated.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ansible_env import ansible_env

from aifactory.inventory import build_inventory, write_inventory
from aifactory.plan.model import ContactsPlan, SitePlan

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
# The SCAP content's OVAL for aide_build_database (ssg-debian 0.1.76), reading /etc/aide/aide.conf.
OVAL_DATABASE = re.compile(r"^database=file:(?:@@\{DBDIR\}/)?([a-z./]+)$", re.M)
OVAL_DATABASE_OUT = re.compile(r"^database_out=file:([a-z./]+)$", re.M)
OVAL_ROOT_ALIAS = re.compile(r'^(?:[rR][oO][oO][tT]|"[rR][oO][oO][tT]")\s*:\s*(.+)$', re.M)

needs_aide = pytest.mark.skipif(
    shutil.which("aide") is None, reason="needs aide (scripts/setup.sh installs it)"
)

PLAYBOOK = """
- name: The base role's file integrity and mail alias tasks, as the role runs them
  hosts: all
  gather_facts: false
  vars:
    base_systemd: false
    base_kernel_shared: true
    base_packages_preinstalled: true
    base_aide_install: false
    base_aide_timer: false
    base_aide_conf: {folder}/etc/aide.conf
    base_aide_db: {folder}/var/lib/aide/aide.db
    base_aide_paths: {paths}
    base_aide_listed_paths: {listed}
    base_aliases_file: {folder}/etc/aliases
  tasks:
    - name: Preflight
      ansible.builtin.include_role: {{name: base, tasks_from: preflight.yml}}
    - name: AIDE
      ansible.builtin.include_role: {{name: base, tasks_from: aide.yml}}
    - name: AIDE's first database (site.yml's last play)
      ansible.builtin.include_role: {{name: base, tasks_from: aide_baseline.yml}}
    - name: Mail alias
      ansible.builtin.include_role: {{name: base, tasks_from: mail_alias.yml}}
"""


def _env(folder: Path) -> dict[str, str]:
    return {**ansible_env(folder), "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default"}


def _play(
    folder: Path, *, inventory: Path | None = None, check: bool = False, **extra: object
) -> subprocess.CompletedProcess[str]:
    watched = folder / "watched"
    paths = [str(watched / "etc"), str(watched / "opt" / "ai.factory-1")]
    playbook = folder / "play.yml"
    playbook.write_text(PLAYBOOK.format(folder=folder, paths=json.dumps(paths), listed=json.dumps(paths[1:])))
    argv = [ANSIBLE_PLAYBOOK, "-c", "local", str(playbook)]
    argv += ["-i", str(inventory)] if inventory else ["-i", "localhost,"]
    argv += ["-e", json.dumps({"ansible_python_interpreter": sys.executable, **extra})]
    argv += ["--check"] if check else []
    return subprocess.run(argv, capture_output=True, text=True, env=_env(folder), timeout=300, check=False)


def _recap(output: str) -> dict[str, int]:
    line = next(line for line in output.splitlines() if re.match(r"^\S+\s+: ok=", line))
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def _host(folder: Path) -> None:
    """A fresh host: two watched folders (one name with regex metacharacters), an aliases file with
    an old root line."""
    for sub in ("watched/etc", "watched/opt/ai.factory-1/v1/lib", "watched/opt/aiXfactory-1", "etc"):
        (folder / sub).mkdir(parents=True)
    (folder / "watched/etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (folder / "watched/opt/ai.factory-1/app").write_text("v1\n")
    # An install (a subfolder of a listed path) and its listing beside it.
    (folder / "watched/opt/ai.factory-1/v1/lib/torch.so").write_text("tree file\n")
    (folder / "watched/opt/ai.factory-1/v1.sha256").write_text(f"{'0' * 64}  ./lib/torch.so\n")
    (folder / "watched/opt/aiXfactory-1/other").write_text("not watched\n")
    (folder / "etc/aliases").write_text("# See man 5 aliases\npostmaster: root\nroot: change_me@localhost\n")


@needs_aide
def test_aide_database_once_and_root_alias_idempotent_and_check_mode_safe(tmp_path: Path) -> None:
    fresh = tmp_path / "dry"
    _host(fresh)
    dry = _play(fresh, check=True, base_root_mail_alias="soc@lab.example")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert not (fresh / "etc/aide.conf").exists() and not (fresh / "var").exists()
    assert "change_me@localhost" in (fresh / "etc/aliases").read_text()

    host = tmp_path / "host"
    _host(host)
    first = _play(host, base_root_mail_alias="soc@lab.example")
    assert first.returncode == 0, first.stdout + first.stderr
    conf = (host / "etc/aide.conf").read_text()
    db = host / "var/lib/aide/aide.db"
    # What the SCAP content reads: the operational database (which exists) and the output database
    # (its patterns take `[a-z./]` only: the scratch folder is read as /host, as the default path is).
    as_read = conf.replace(str(host), "/host")
    assert OVAL_DATABASE.findall(as_read) == ["/host/var/lib/aide/aide.db"]
    assert OVAL_DATABASE_OUT.findall(as_read) == ["/host/var/lib/aide/aide.db.new"]
    assert f"database_in=file:{db}\n" in conf
    # Each watched path is a literal regex: the '.' and '-' of a name do not match other folders.
    assert f"\n{re.escape(str(host / 'watched/opt/ai.factory-1'))} AifactoryWatch\n" in conf
    assert db.is_file() and not Path(f"{db}.new").exists()
    # Below an install of a listed path, attributes only: no content checksum in the database; the
    # listing beside it, and files of the listed path itself, keep their SHA-512.
    checksums = _sha512_by_path(db)
    assert checksums[str(host / "watched/opt/ai.factory-1/v1/lib/torch.so")] == "0"
    assert checksums[str(host / "watched/opt/ai.factory-1/v1.sha256")] != "0"
    assert checksums[str(host / "watched/opt/ai.factory-1/app")] != "0"
    # A folder the regex `ai.factory-1` would match unescaped is not watched: its change is not one.
    (host / "watched/opt/aiXfactory-1/other").write_text("changed\n")
    checked = subprocess.run(
        ["aide", "--check", f"--config={host / 'etc/aide.conf'}"], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr  # nothing watched changed
    assert OVAL_ROOT_ALIAS.findall((host / "etc/aliases").read_text()) == ["soc@lab.example"]
    assert "postmaster: root" in (host / "etc/aliases").read_text()

    stamp = db.stat().st_mtime_ns
    (host / "watched/opt/ai.factory-1/app").write_text("v2\n")  # a change the database must show
    # A same-size rewrite below the install with its mtime put back: AIDE still reports it (its ctime,
    # which AIDE records in whole seconds: written a second after the database).
    tree_file = host / "watched/opt/ai.factory-1/v1/lib/torch.so"
    before = tree_file.stat()
    time.sleep(max(0.0, int(db.stat().st_mtime) + 1.05 - time.time()))
    tree_file.write_text("tree filf\n")
    os.utime(tree_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = _play(host, base_root_mail_alias="soc@lab.example")
    assert second.returncode == 0, second.stdout + second.stderr
    assert _recap(second.stdout)["changed"] == 0, second.stdout
    assert db.stat().st_mtime_ns == stamp, "the baseline was rebuilt"
    checked = subprocess.run(
        ["aide", "--check", f"--config={host / 'etc/aide.conf'}"], capture_output=True, text=True
    )
    assert checked.returncode != 0 and "ai.factory-1/app" in checked.stdout
    assert re.search(r"^f[^:\n]*c[^:\n]*: .*/v1/lib/torch\.so$", checked.stdout, re.M), checked.stdout


def _sha512_by_path(db: Path) -> dict[str, str]:
    """The sha512 field of every entry of an AIDE 0.18 database (gzip, '@@db_spec' names the fields)."""
    lines = gzip.decompress(db.read_bytes()).decode().splitlines()
    spec = next(line.split()[1:] for line in lines if line.startswith("@@db_spec "))
    at = spec.index("sha512")
    rows = (line.split(" ") for line in lines if line.startswith("/"))
    return {row[0]: row[at] for row in rows}


def test_without_a_contact_the_aliases_file_is_left_alone(tmp_path: Path) -> None:
    _host(tmp_path)
    done = _play(tmp_path, check=True, base_aide_paths=["/nonexistent"], base_aide_listed_paths=[])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Base | configure | root's mail goes to the site's security contact" in done.stdout
    assert "skipping: [localhost]" in done.stdout.split("root's mail goes to")[1].split("TASK")[0]


HOSTILE_ALIASES = {
    "newline": "soc@lab.example\nroot: attacker@evil.example",
    "trailing-newline": "soc@lab.example\n",
    "jinja": "{{ lookup('pipe', 'touch CANARY') }}@lab.example",
    "space": "soc@lab.example admin@lab.example",
    "pipe": "|/bin/sh -c 'touch CANARY'",
}


@pytest.mark.parametrize("what", list(HOSTILE_ALIASES))
def test_the_preflight_refuses_a_mail_alias_that_is_not_an_address(what: str, tmp_path: Path) -> None:
    """The site's contact as the plan carries it (spec validation bypassed), through the inventory:
    the preflight refuses it and nothing is evaluated or written."""
    _host(tmp_path)
    canary = tmp_path / "CANARY"
    value = HOSTILE_ALIASES[what].replace("CANARY", str(canary))
    inventory = _inventory(tmp_path, value)
    done = _play(tmp_path, inventory=inventory, check=True)
    assert done.returncode != 0
    assert "base_root_mail_alias an email address (or none)" in done.stdout, done.stdout
    assert not canary.exists()
    assert (tmp_path / "etc/aliases").read_text().endswith("root: change_me@localhost\n")


@pytest.mark.parametrize("path", ["/etc\n/ R", "relative/path", "/opt/../etc", "/opt/a b", "/opt/a\\\\b"])
def test_the_preflight_refuses_a_watched_path_that_is_not_a_plain_path(path: str, tmp_path: Path) -> None:
    _host(tmp_path)
    done = _play(tmp_path, check=True, base_aide_paths=[path])
    assert done.returncode != 0
    assert "base_aide_paths must be a list of absolute paths" in done.stdout, done.stdout


@pytest.mark.parametrize("path", ["/opt\n/ R", "relative", "/opt/../etc", "/opt/a b", "/srv/not-watched"])
def test_the_preflight_refuses_a_listed_path_not_plain_or_not_watched(path: str, tmp_path: Path) -> None:
    """A listed path becomes a selection line of aide.conf too, and AIDE honours it only when watched."""
    _host(tmp_path)
    done = _play(tmp_path, check=True, base_aide_listed_paths=[path])
    assert done.returncode != 0
    assert "base_aide_listed_paths such paths, each one of base_aide_paths or below one" in " ".join(
        done.stdout.split()
    ), done.stdout
    assert not (tmp_path / "etc/aide.conf").exists()


def _inventory(folder: Path, contact: str) -> Path:
    from aifactory.plan import plan_site

    planned = plan_site(REPO / "inventory" / "lab" / "site.yaml", write_lock=False)
    plan = SitePlan.from_dict(planned.plan.to_dict() | {"contacts": {"security": contact}})
    assert plan.contacts == ContactsPlan(contact)
    inventory = folder / "inventory"
    write_inventory(build_inventory(plan), inventory)
    # Every host of the plan is the local machine.
    hosts = folder / "hosts.yml"
    hosts.write_text("all:\n  hosts:\n    localhost: {}\n")
    shutil.copytree(inventory / "group_vars", folder / "group_vars")
    return hosts


@pytest.mark.parametrize("workers", ["4\ndatabase_out=file:/tmp/x", "half", "-1", "50 %"])
def test_the_preflight_refuses_aide_workers_that_are_not_a_number_or_a_percentage(
    workers: str, tmp_path: Path
) -> None:
    """num_workers is one line of aide.conf: a newline there would add a setting of its own."""
    _host(tmp_path)
    done = _play(tmp_path, check=True, base_aide_workers=workers)
    assert done.returncode != 0
    assert "base_aide_workers a whole number or a percentage" in " ".join(done.stdout.split()), done.stdout
    assert not (tmp_path / "etc/aide.conf").exists()
