#!/usr/bin/python
# Copyright: aifactory developers. Apache-2.0.
"""Ansible module: extract a prebuilt runtime tree with stock tar and check every file against its listing."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: aifactory_runtime_tree
short_description: Extract a bundle's prebuilt runtime tree and check every file against its signed listing
description:
  - Extracts the compressed runtime tree (C(tar --zstd), stock GNU tar) into a new staging folder
    beside I(dest) (C(.<name>.partial-<random>)), checks the SHA-256 of every file the listing names
    and that no file the listing does not name appeared (docs/bundle.md, "Runtime trees"), then
    renames the staging folder to I(dest) in one step, so I(dest) holds a checked tree or nothing.
  - Staging folders of the same I(dest) left by an earlier run that was killed are removed first. A
    run the runtime role starts in the background (C(async)) and a later one never write into the
    same folder, so a job orphaned by a failed deploy cannot mix its files into the next one's.
  - The listing is the bundle's, in C(sha256sum) format (C(<64 hex>  <relative path>) per line);
    the bundle role has checked the archive and the listing against the signed manifest.
  - On any mismatch it fails naming the first files found and removes its staging folder; I(dest)
    is not created.
  - The digests are computed with Python's hashlib (OpenSSL), which on this project's hosts is
    about 2.5 times faster than coreutils' C(sha256sum) over the same tree.
  - Always changes the folder; check mode does nothing and reports a change.
options:
  archive:
    description: The tree's C(.tar.zst) archive on the host.
    type: path
    required: true
  listing:
    description: The tree's file listing on the host (sha256sum format).
    type: path
    required: true
  dest:
    description: The folder the checked tree becomes; must not exist, or be an empty folder.
    type: path
    required: true
author: aifactory developers
"""

EXAMPLES = r"""
- name: Extract and check the runtime tree
  aifactory.factory.aifactory_runtime_tree:
    archive: /var/lib/aifactory/bundle/20261205.1/runtime/317f.tar.zst
    listing: /var/lib/aifactory/bundle/20261205.1/runtime/317f.files
    dest: /opt/aifactory/20261205.1
"""

RETURN = r"""
files:
  description: How many files were extracted and checked.
  returned: success
  type: int
"""

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule

# Only ansible-core's module_utils: the runtime role runs this module as an async job, and Mitogen's
# forked async child (mitogen 0.3.54) hangs importing a collection's module_utils (seen here: the job
# never starts its work). AnsibleModule.sha256 reads with hashlib as fast as hashlib.file_digest here.

SHOWN = 5  # files named in a failure message


def read_listing(path):
    """{relative path: hex digest} from a sha256sum-format listing; raises ValueError on a bad line."""
    expected = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\n")
            digest, sep, name = line.partition("  ")
            if not sep or len(digest) != 64 or not name or name.startswith("/") or ".." in name.split("/"):
                raise ValueError("line %d of the listing is not '<sha256>  <relative path>'" % number)
            expected[name] = digest
    return expected


def extracted_files(root):
    """Every regular file under root, relative, sorted. Links are not listed (the venv's interpreter
    links, lib64): they came from the archive, whose digest the signed manifest names."""
    found = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                found.append(os.path.relpath(path, root))
    return sorted(found)


def check_tree(module, root, expected):
    """Problems found comparing the extracted tree with the listing (empty when it matches)."""
    problems = []
    present = extracted_files(root)
    extra = [name for name in present if name not in expected]
    if extra:
        problems.append("files not in the bundle's signed listing appeared: %s" % " ".join(extra[:SHOWN]))
    wrong = []
    for name in sorted(expected):
        path = os.path.join(root, name)
        if os.path.islink(path) or not os.path.isfile(path):
            wrong.append(name + " (missing)")
        elif module.sha256(path) != expected[name]:
            wrong.append(name + " (digest differs)")
        if len(wrong) >= SHOWN:
            break
    if wrong:
        problems.append("files that do not match the bundle's signed listing: %s" % " ".join(wrong))
    return problems


class TreeRefused(Exception):
    """The archive did not extract, or what it held does not match the signed listing."""


def staging_prefix(dest):
    """The name every staging folder of dest starts with (hidden, beside it, on the same filesystem:
    the final rename is one step)."""
    return ".%s.partial-" % os.path.basename(dest)


def remove_stale_staging(dest):
    """Staging folders of dest an earlier, killed run left (a job still running in one fails)."""
    parent, prefix = os.path.dirname(dest), staging_prefix(dest)
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if name.startswith(prefix) and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)


def install(module, archive, expected, dest):
    """Extract into a new staging folder, check it, rename it to dest; fails (staging removed) otherwise."""
    remove_stale_staging(dest)
    staging = tempfile.mkdtemp(prefix=staging_prefix(dest), dir=os.path.dirname(dest))
    try:
        os.chmod(staging, 0o755)
        rc, _out, err = module.run_command(
            ["tar", "--zstd", "--extract", "--no-same-owner", "--file", archive, "--directory", staging]
        )
        if rc != 0:
            raise TreeRefused("tar could not extract %s: %s" % (archive, err.strip()))
        problems = check_tree(module, staging, expected)
        if problems:
            raise TreeRefused("runtime tree %s: %s" % (archive, "; ".join(problems)))
        if os.path.isdir(dest):
            os.rmdir(dest)  # an empty folder, not a link (main checked): the rename needs the name free
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def main():
    module = AnsibleModule(
        argument_spec={
            "archive": {"type": "path", "required": True},
            "listing": {"type": "path", "required": True},
            "dest": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    archive, listing, dest = (module.params[k] for k in ("archive", "listing", "dest"))
    dest = os.path.normpath(dest)  # no trailing '/': its name and folder are what staging needs
    if module.check_mode:
        module.exit_json(changed=True)
    try:
        expected = read_listing(listing)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        module.fail_json(msg="runtime tree listing %s: %s" % (listing, exc))
    if os.path.islink(dest) or (os.path.lexists(dest) and (not os.path.isdir(dest) or os.listdir(dest))):
        module.fail_json(msg="runtime tree: %s is there and is not an empty folder" % dest)
    try:
        install(module, archive, expected, dest)
    except TreeRefused as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg="runtime tree %s into %s: %s" % (archive, dest, exc))
    module.exit_json(changed=True, files=len(expected))


if __name__ == "__main__":
    main()
