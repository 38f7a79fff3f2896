"""The known_hosts file the deploy checks hosts' SSH host keys against, as a host-key rotation and a
host's replacement (aifactory.lifecycle.replace: `trust_only`) edit it.

A rotation never learns a key from the network on its own (no keyscan, no trust on first use): each
host generates its new key and returns the public half over the SSH connection the deploy already
authenticates with the old key, and only then is a line added here. For the overlap a host has two
lines, the old key's (left as it was) and the new key's, with the same host patterns and marked in
the comment field (`aifactory-rotation=ID host=HOST`); OpenSSH accepts a host that shows either.
Finishing drops every other key of the host, leaving the new line alone.

Lines are matched to a host by its names (plain or `|1|` hashed patterns, as `ssh-keygen -H` writes
them); marker lines (`@cert-authority`, `@revoked`), comments and other hosts' lines are kept byte
for byte.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aifactory.durable import atomic_write
from aifactory.errors import Location, RotationError

# The only host key type a rotation installs (what the base role's sshd and the lab's sshd use).
HOST_KEY_LINE = re.compile(r"ssh-ed25519 [A-Za-z0-9+/]{68}")
# Its fingerprint as `ssh-keygen -l` prints it (key_fingerprint): SHA-256, base64 without padding.
FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """One line of the file: `patterns` and `key` (type and base64) are None for a comment, a blank
    or a marker line, which are kept as they are."""

    text: str
    patterns: str | None = None
    key: str | None = None

    @classmethod
    def parse(cls, text: str) -> Entry:
        fields = text.split()
        if len(fields) < 3 or fields[0].startswith(("#", "@")):
            return cls(text)
        return cls(text, fields[0], f"{fields[1]} {fields[2]}")

    def names(self, names: Iterable[str]) -> bool:
        """Whether the line's patterns name one of `names` (literally, or hashed)."""
        if self.patterns is None:
            return False
        wanted = set(names)
        for pattern in self.patterns.split(","):
            if pattern.startswith("|1|"):
                if any(_hashed_match(pattern, name) for name in wanted):
                    return True
            elif pattern in wanted:
                return True
        return False


def _hashed_match(pattern: str, name: str) -> bool:
    parts = pattern.split("|")
    if len(parts) != 4:
        return False
    try:
        salt, digest = base64.b64decode(parts[2]), base64.b64decode(parts[3])
    except ValueError:
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)


def read(path: Path) -> list[Entry]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RotationError(
            f"cannot read the known_hosts file {path}: {exc.strerror}",
            code="rotation-known-hosts",
            location=Location(file=str(path)),
            hint="name the known_hosts file the deploy uses (--known-hosts)",
        ) from None
    if len(data) > MAX_BYTES:
        raise RotationError(
            f"the known_hosts file {path} is over {MAX_BYTES} bytes",
            code="rotation-known-hosts",
            location=Location(file=str(path)),
        )
    return [Entry.parse(line) for line in data.decode("utf-8", errors="replace").splitlines()]


def write(path: Path, entries: Sequence[Entry]) -> None:
    atomic_write(path, "".join(f"{e.text}\n" for e in entries).encode(), mode=0o644)


def host_keys(entries: Sequence[Entry], names: Sequence[str]) -> list[str]:
    """The keys (type and base64) the file trusts for a host known by `names`."""
    return [e.key for e in entries if e.key is not None and e.names(names)]


def add_key(path: Path, *, host: str, names: Sequence[str], key: str, rotation: str) -> None:
    """Trust `key` for `host` beside the key(s) already trusted, with the same patterns as the host's
    first line. Adding a key already there changes nothing (a resumed rotation)."""
    check_key(key, host=host)
    entries = read(path)
    if key in host_keys(entries, names):
        return
    current = next((e for e in entries if e.key is not None and e.names(names)), None)
    if current is None or current.patterns is None:
        raise RotationError(
            f"{path} trusts no host key for {host} (names {', '.join(names)}): a new key is learned only "
            "beside one the deploy already checks",
            code="rotation-known-hosts",
            location=Location(file=str(path)),
            hint="give the known_hosts file the deploy uses (--known-hosts); host keys are never "
            "learned by keyscan",
        )
    marked = Entry.parse(f"{current.patterns} {key} aifactory-rotation={rotation} host={host}")
    write(path, [*entries, marked])


def trust_only(path: Path, *, host: str, names: Sequence[str], key: str, note: str) -> list[str]:
    """Make `key` the one key the file trusts for a host known by `names` (a replaced machine's key,
    proven before it comes here): every other line naming the host is dropped, and one line added
    with the patterns of the host's first line (else its names) and `note` as its comment. Marker
    lines, comments and other hosts' lines are kept byte for byte; a missing file is created.
    Returns the keys dropped."""
    check_key(key, host=host)
    entries = read(path) if path.exists() else []
    mine = [e for e in entries if e.key is not None and e.names(names)]
    patterns = mine[0].patterns if mine and mine[0].patterns else ",".join(names)
    kept = [e for e in entries if e not in mine]
    write(path, [*kept, Entry.parse(f"{patterns} {key} {note}")])
    return [e.key for e in mine if e.key is not None and e.key != key]


def keep_only(path: Path, keep: Mapping[str, tuple[Sequence[str], str]]) -> list[str]:
    """For each host (name -> (its names, the key to keep)), drop every other key the file trusts for
    it. Refuses, changing nothing, when the key to keep is not there. Returns the hosts changed."""
    entries = read(path)
    dropped: set[int] = set()
    changed: list[str] = []
    for host, (names, key) in keep.items():
        if key not in host_keys(entries, names):
            raise RotationError(
                f"{path} does not trust the new host key of {host}: nothing was dropped",
                code="rotation-known-hosts",
                location=Location(file=str(path)),
                hint="run the rotation without --finish first: it learns the host's new key",
            )
        others = {i for i, e in enumerate(entries) if e.key not in (None, key) and e.names(names)}
        if others:
            changed.append(host)
        dropped |= others
    write(path, [e for i, e in enumerate(entries) if i not in dropped])
    return changed


def check_key(key: str, *, host: str) -> str:
    """A host's public key as the host returned it: one ed25519 key, nothing else (no options, no
    second line a hostile host could smuggle into the file)."""
    if not HOST_KEY_LINE.fullmatch(key):
        raise RotationError(
            f"{host} returned {key[:80]!r}, not one ssh-ed25519 public key",
            code="rotation-host-key",
            hint="check the host: its staged host key is not what `ssh-keygen -t ed25519` writes",
        )
    return key


def key_fingerprint(key: str) -> str:
    """`ssh-keygen -l`'s SHA256 fingerprint of a key line's base64 blob."""
    blob = base64.b64decode(key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
