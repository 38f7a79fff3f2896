"""The collection's module aifactory_files (playbooks/plugins/modules/aifactory_files.py): a role's
folders and small files in one task. Real ansible-playbook, local connection, in a scratch folder:

- a first run makes the folders and files with their owner, group and mode; a template's content
  (the stock template lookup) is byte for byte what the stock template module writes; hostile text
  in a variable is written verbatim, never run; a second run changes nothing;
- check mode with diff reports a changed content and a changed mode under the file's path and
  changes nothing;
- a symbolic link where a file goes is refused, its target is untouched and nothing after it is
  written; a failed validate keeps the old file and leaves no temporary file;
- the result names every path (what the converged probe records) and carries no content.
"""

from __future__ import annotations

import json
import re
import secrets
import stat
import subprocess
from pathlib import Path
from typing import Any

from local_playbook import run_playbook_here

# Canaries named for this run: a file some other program left under /tmp cannot fail the test, and
# the test sees only what the hostile text would have made.
CANARY = f"/tmp/aifactory-files-pwned-{secrets.token_hex(6)}"
HOSTILE = f"{{{{ lookup('pipe', 'touch {CANARY}-lookup') }}}} $(touch {CANARY}-shell) `id`; rm -rf /\n"
TEMPLATE = (
    "# {{ ansible_managed }}\nvalue = {{ hostile }}\n{% for n in [1, 2] %}\nline {{ n }}\n{% endfor %}\n"
)


def _playbook(folder: Path, files: list[dict[str, Any]], folders: list[dict[str, Any]]) -> Path:
    (folder / "templates").mkdir(exist_ok=True)
    (folder / "templates" / "t.j2").write_text(TEMPLATE)
    task = {"aifactory.factory.aifactory_files": {"folders": folders, "files": files}, "register": "done"}
    play = [
        {
            "name": "aifactory_files",
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {"hostile": "!unsafe"},  # replaced below: YAML's !unsafe tag, not a string
            "tasks": [
                {"name": "Files", **task},
                {
                    "name": "Result",
                    "ansible.builtin.copy": {
                        "content": "{{ done | to_json }}",
                        "dest": str(folder / "result.json"),
                        "mode": "0600",
                    },
                    "changed_when": False,  # what changed is the module's task alone
                },
            ],
        }
    ]
    text = json.dumps(play, indent=1).replace('"!unsafe"', "!unsafe " + json.dumps(HOSTILE))
    path = folder / "play.yml"
    path.write_text(text)
    return path


def _changed(done: subprocess.CompletedProcess[str]) -> int:
    found = re.search(r"changed=(\d+)", done.stdout)
    assert found, done.stdout[-3000:] + done.stderr[-2000:]
    return int(found.group(1))


def _mode(path: Path) -> str:
    return f"{stat.S_IMODE(path.lstat().st_mode):04o}"


def _site(tmp_path: Path) -> tuple[Path, list[dict[str, Any]], list[dict[str, Any]]]:
    out = tmp_path / "out" / "conf.d"
    folders = [{"path": str(out), "owner": "root", "group": "adm", "mode": "0750"}]
    files = [
        {
            "path": str(out / "templated.conf"),
            "content": "{{ lookup('ansible.builtin.template', 't.j2') }}",
            "owner": "root",
            "group": "adm",
            "mode": "0640",
        },
        {"path": str(out / "plain.conf"), "content": "plain {{ hostile }}", "mode": "0600"},
        {  # a control-host file, as the roles read certificates and rules
            "path": str(out / "read.pem"),
            "content": f"{{{{ lookup('ansible.builtin.file', '{tmp_path / 'source.pem'}', rstrip=false) }}}}",
            "mode": "0644",
        },
    ]
    (tmp_path / "source.pem").write_text(HOSTILE)
    return out, folders, files


def test_files_are_written_once_as_the_template_module_would_and_hostile_text_stays_text(
    tmp_path: Path,
) -> None:
    out, folders, files = _site(tmp_path)
    playbook = _playbook(tmp_path, files, folders)
    first = run_playbook_here(tmp_path, playbook)
    assert first.returncode == 0, first.stdout[-3000:]
    assert _changed(first) == 1
    assert _mode(out) == "0750" and out.stat().st_gid == 4  # adm
    assert (out / "plain.conf").read_text() == "plain " + HOSTILE
    assert _mode(out / "plain.conf") == "0600" and _mode(out / "templated.conf") == "0640"
    assert not Path(f"{CANARY}-lookup").exists() and not Path(f"{CANARY}-shell").exists()
    result = json.loads((tmp_path / "result.json").read_text())
    assert (out / "read.pem").read_text() == HOSTILE  # byte for byte, the text not evaluated
    assert result["paths"] == [
        str(out),
        *(str(out / n) for n in ("templated.conf", "plain.conf", "read.pem")),
    ]
    assert "plain " not in json.dumps(result)  # contents are not echoed, only their digests
    # what the stock template module writes from the same template and variables
    written = (out / "templated.conf").read_bytes()
    stock = tmp_path / "stock.yml"
    stock.write_text(
        "- hosts: localhost\n  gather_facts: false\n  vars:\n    hostile: !unsafe "
        + json.dumps(HOSTILE)
        + "\n  tasks:\n    - ansible.builtin.template:"
        + f" {{src: t.j2, dest: {tmp_path / 'stock.conf'}, mode: '0644'}}\n"
    )
    assert run_playbook_here(tmp_path, stock).returncode == 0
    assert (tmp_path / "stock.conf").read_bytes() == written
    assert b"{{ lookup('pipe'" in written

    again = run_playbook_here(tmp_path, playbook)
    assert again.returncode == 0 and _changed(again) == 0, again.stdout[-3000:]


def test_check_mode_reports_content_and_mode_changes_and_changes_nothing(tmp_path: Path) -> None:
    out, folders, files = _site(tmp_path)
    playbook = _playbook(tmp_path, files, folders)
    assert run_playbook_here(tmp_path, playbook).returncode == 0
    (out / "plain.conf").write_text("edited by hand\n")
    (out / "templated.conf").chmod(0o644)
    checked = run_playbook_here(tmp_path, playbook, "--check", "--diff")
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert f"--- before: {out / 'plain.conf'}" in checked.stdout
    assert "-edited by hand" in checked.stdout and "+plain {{ lookup('pipe'" in checked.stdout
    assert '-    "mode": "0644"' in checked.stdout and '+    "mode": "0640"' in checked.stdout
    assert (out / "plain.conf").read_text() == "edited by hand\n"
    assert _mode(out / "templated.conf") == "0644"


def test_a_link_where_a_file_goes_is_refused_and_nothing_after_it_is_written(tmp_path: Path) -> None:
    out, folders, files = _site(tmp_path)
    out.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    target.write_text("not ours\n")
    (out / "templated.conf").symlink_to(target)
    done = run_playbook_here(tmp_path, _playbook(tmp_path, files, folders))
    assert done.returncode != 0
    assert "refused:" in done.stdout and "is a link, not a regular file" in done.stdout
    assert target.read_text() == "not ours\n"
    assert not (out / "plain.conf").exists()


def test_a_failed_validate_keeps_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    out, folders, files = _site(tmp_path)
    out.mkdir(parents=True)
    (out / "plain.conf").write_text("old\n")
    files[1]["validate"] = "/bin/false %s"
    done = run_playbook_here(tmp_path, _playbook(tmp_path, files, folders))
    assert done.returncode != 0
    assert "validation failed, the old file is kept" in done.stdout
    assert (out / "plain.conf").read_text() == "old\n"
    assert sorted(p.name for p in out.iterdir()) == ["plain.conf", "templated.conf"]  # none after it
