# Copyright: aifactory developers. Apache-2.0.
"""File digests for the collection's modules (aifactory_host_state): one definition, shipped with
each module that imports it. (aifactory_runtime_tree runs as an async job, where Mitogen's forked
child cannot import a collection's module_utils: it uses AnsibleModule.sha256.)"""

from __future__ import annotations

import hashlib

CHUNK = 1 << 20


def sha256_file(path):
    """The hex SHA-256 of a file's bytes. Python 3.11+ reads it in C (hashlib.file_digest, no copy
    through Python); older Pythons on a host read it in 1 MiB blocks."""
    with open(path, "rb") as handle:
        if hasattr(hashlib, "file_digest"):
            return hashlib.file_digest(handle, "sha256").hexdigest()
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
        return digest.hexdigest()
