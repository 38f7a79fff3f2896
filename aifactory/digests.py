"""File digests shared by every stage (bundle, runtime checkpoints and datasets, audit reports)."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20  # streamed: memory stays bounded whatever the file's size


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, as lowercase hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """The SHA-256 of some bytes, as lowercase hex (sha256_file's form)."""
    return hashlib.sha256(data).hexdigest()
