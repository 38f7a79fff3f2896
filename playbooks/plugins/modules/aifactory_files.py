#!/usr/bin/python
# Copyright: aifactory developers. Apache-2.0.
"""Ansible module: a role's folders and small files set in one task, with honest check mode and diff."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: aifactory_files
short_description: Set a role's folders and small files in one task, each with its owner, group and mode
description:
  - One task for what a role would otherwise set with several C(file) (state directory), C(template)
    and C(copy) (content) tasks; each task costs the controller a worker, the host's variables and an
    event per host even when nothing changes (docs/deploy.md, "Fewer, heavier tasks").
  - Folders are made first, in the order given, then files are written in the order given.
  - A file's content is written to a temporary file beside it with the requested owner, group and
    mode, checked with I(validate) when given, and renamed over the old one, so a reader sees the old
    file or the new one, never a half-written or wrongly permitted one; a file whose content is the
    same is not rewritten (its owner, group and mode are still set).
  - A path that exists as a symbolic link, or as a file where a folder is asked for (or the
    reverse), is refused and nothing after it is touched; a planted link cannot send root's write
    elsewhere.
  - Check mode changes nothing and reports what would change; with diff, each changed file's old and
    new content (and each owner, group or mode change) is reported under the file's path.
  - The result names every managed path (I(paths)), which the converged probe records; the
    contents are not echoed in the result (only their SHA-256 and size), so a rendered configuration
    is kept in the deploy's event log once, in the diff when one is asked for.
  - Contents are data, written byte for byte, never interpreted by the module or a shell.
options:
  folders:
    description: Folders to make (parents too) or to keep, each with its owner, group and mode.
    type: list
    elements: dict
    default: []
    suboptions: &entry  # a file's path, mode, owner and group read the same (files, below)
      path:
        description: Absolute path; a file's folder must exist (or be one of I(folders)).
        type: path
        required: true
      mode:
        description: >-
          Octal mode as a string (C("0755"), C("0644")); required, so that nothing is left to the
          umask.
        type: str
        required: true
      owner:
        description: Owner (name or id); left as it is when not given.
        type: str
      group:
        description: Group (name or id); left as it is when not given.
        type: str
  files:
    description: Files to write, each with its whole content.
    type: list
    elements: dict
    default: []
    suboptions:
      <<: *entry
      content:
        description:
          - The whole content (text, written as UTF-8).
          - "A template's: C(lookup('ansible.builtin.template', 'NAME.j2')) (the role's templates/)."
        type: str
        required: true
      validate:
        description:
          - A command run on the new content before it replaces the old, C(%s) standing for the
            temporary file's path (as C(template)'s I(validate)); split into arguments, no shell.
            A non-zero exit fails the task and leaves the old file.
        type: str
author: aifactory developers
"""

EXAMPLES = r"""
- name: Journald retention, its drop-in folder with it
  aifactory.factory.aifactory_files:
    folders:
      - {path: /etc/systemd/journald.conf.d, owner: root, group: root, mode: "0755"}
    files:
      - path: /etc/systemd/journald.conf.d/aifactory.conf
        content: "{{ lookup('ansible.builtin.template', 'journald.conf.j2') }}"
        owner: root
        group: root
        mode: "0644"
  notify: base journald changed
"""

RETURN = r"""
paths:
  description: Every folder and file the task manages, in order.
  returned: always
  type: list
  elements: str
changed_paths:
  description: The folders and files that changed (or would, in check mode).
  returned: always
  type: list
  elements: str
"""

import hashlib
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_text

ENTRY = {
    "path": {"type": "path", "required": True},
    "mode": {"type": "str", "required": True},
    "owner": {"type": "str"},
    "group": {"type": "str"},
}
FILE_ENTRY = dict(ENTRY, content={"type": "str", "required": True}, validate={"type": "str"})


class Refused(Exception):
    """A path this module will not write (a link, or the wrong kind of thing)."""


def kind(path):
    """'absent', 'link', 'directory', 'file' or 'other' for what is at path now (not following links)."""
    if os.path.islink(path):
        return "link"
    if not os.path.lexists(path):
        return "absent"
    if os.path.isdir(path):
        return "directory"
    return "file" if os.path.isfile(path) else "other"


def attributes(entry, path):
    """The file arguments AnsibleModule sets: owner, group and mode of one path."""
    return {
        "path": path,
        "mode": entry["mode"],
        "owner": entry.get("owner"),
        "group": entry.get("group"),
        "secontext": [None, None, None],  # SELinux: the folder's default, as a new file gets
        "attributes": None,
    }


def apply_attributes(module, entry, path, diffs):
    """Set owner, group and mode (check mode: only say whether they would change)."""
    diff = {"before": {}, "after": {}, "before_header": path, "after_header": path}
    changed = module.set_fs_attributes_if_different(attributes(entry, path), False, diff, expand=False)
    if changed and module._diff and diff["before"] != diff["after"]:
        diffs.append(diff)
    return changed


def make_folder(module, entry, diffs):
    path = entry["path"]
    found = kind(path)
    if found not in ("absent", "directory"):
        raise Refused("%s is a %s, not a folder" % (path, found))
    if found == "absent":
        if not module.check_mode:
            os.makedirs(path)
            apply_attributes(module, entry, path, [])
        if module._diff:
            diffs.append(
                {
                    "before": {"path": path, "state": "absent"},
                    "after": {"path": path, "state": "directory"},
                    "before_header": path,
                    "after_header": path,
                }
            )
        return True
    return apply_attributes(module, entry, path, diffs)


def content_diff(path, old, new):
    def shown(data):
        try:
            return to_text(data, errors="strict")
        except UnicodeDecodeError:
            return "(%d bytes, not text)\n" % len(data)

    return {"before": shown(old), "after": shown(new), "before_header": path, "after_header": path}


def write_atomically(module, entry, path, data):
    """The content into a temporary file beside path, owner/group/mode set, validated, renamed over."""
    folder = os.path.dirname(path)
    handle, scratch = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        apply_attributes(module, entry, scratch, [])
        if entry.get("validate"):
            command = entry["validate"]
            if "%s" not in command:
                module.fail_json(msg="validate for %s must name the new file as %%s: %s" % (path, command))
            rc, out, err = module.run_command(command % scratch)
            if rc != 0:
                module.fail_json(
                    msg="%s: validation failed, the old file is kept: %s" % (path, (err or out).strip()),
                    rc=rc,
                )
        os.rename(scratch, path)
        scratch = None
    finally:
        if scratch is not None and os.path.lexists(scratch):
            os.unlink(scratch)


def write_file(module, entry, diffs):
    path = entry["path"]
    found = kind(path)
    if found not in ("absent", "file"):
        raise Refused("%s is a %s, not a regular file" % (path, found))
    data = to_bytes(entry["content"], errors="surrogate_or_strict")
    old = b""
    if found == "file":
        with open(path, "rb") as handle:
            old = handle.read()
    if found == "file" and old == data:
        return apply_attributes(module, entry, path, diffs)
    if module._diff:
        diffs.append(content_diff(path, old, data))
    if module.check_mode:
        return True
    if not os.path.isdir(os.path.dirname(path)):
        raise Refused("the folder of %s does not exist" % path)
    write_atomically(module, entry, path, data)
    return True


def logged_args(params):
    """The invocation the result carries: each content as its digest and size, not the text."""
    files = []
    for entry in params["files"]:
        data = to_bytes(entry["content"], errors="surrogate_or_strict")
        shown = dict(entry, content="sha256:%s (%d bytes)" % (hashlib.sha256(data).hexdigest(), len(data)))
        files.append(shown)
    return {"folders": params["folders"], "files": files}


def main():
    module = AnsibleModule(
        argument_spec={
            "folders": {"type": "list", "elements": "dict", "default": [], "options": ENTRY},
            "files": {"type": "list", "elements": "dict", "default": [], "options": FILE_ENTRY},
        },
        supports_check_mode=True,
    )
    entries = [(make_folder, e) for e in module.params["folders"]] + [
        (write_file, e) for e in module.params["files"]
    ]
    for _action, entry in entries:
        if not os.path.isabs(entry["path"]):
            module.fail_json(msg="%s is not an absolute path" % entry["path"])
    paths, changed_paths, diffs = [], [], []
    for action, entry in entries:
        path = os.path.normpath(entry["path"])
        entry = dict(entry, path=path)
        paths.append(path)
        try:
            if action(module, entry, diffs):
                changed_paths.append(path)
        except Refused as exc:
            module.fail_json(
                msg="refused: %s (nothing after it was touched)" % exc,
                paths=paths,
                changed_paths=changed_paths,
                invocation={"module_args": logged_args(module.params)},
            )
        except OSError as exc:
            module.fail_json(
                msg="%s: %s" % (path, exc),
                paths=paths,
                changed_paths=changed_paths,
                invocation={"module_args": logged_args(module.params)},
            )
    result = {
        "changed": bool(changed_paths),
        "paths": paths,
        "changed_paths": changed_paths,
        "invocation": {"module_args": logged_args(module.params)},
    }
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
