"""Resolve `secret://<path>` references at run time.

Two sources, tried in order:
1. the environment: `secret://bmc/lab-cpu-001` reads AIFACTORY_SECRET_BMC_LAB_CPU_001
   (the path upper-cased, every character that is not a letter or digit turned into `_`);
2. the site's encrypted store, `secrets.enc` in the state folder: AES-256-GCM under a key derived
   with scrypt from a passphrase read from a file (--passphrase-file or AIFACTORY_PASSPHRASE_FILE)
   or a terminal prompt, never from a command-line argument.
A reference with `{host}` is looked up for the host first, then as written (one shared value).

Values never appear in errors, logs or reprs.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from aifactory.errors import SecretError
from aifactory.spec.grammar import SECRET

SCHEME = "secret://"
# The spec's grammar: segments of letters, digits, '_', '-' and inner dots, `{host}` the only
# placeholder (no other brace, so no template delimiter; no `..`, no `//`, no newline).
REFERENCE = re.compile(SECRET.pattern)
STORE_FILE = "secrets.enc"
# scrypt cost settings, shared by the backups (aifactory.backup) that encrypt the same way.
SCRYPT_PARAMS = {"n": 2**15, "r": 8, "p": 1}


def is_reference(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SCHEME)


def well_formed(reference: str) -> bool:
    """Whether `reference` is a secret reference in the spec's grammar (the whole string)."""
    return len(reference) <= SECRET.max_length and REFERENCE.fullmatch(reference) is not None


def expand(reference: str, *, host: str | None = None) -> str:
    """`secret://bmc/{host}` -> `secret://bmc/lab-cpu-001` for one host."""
    if "{host}" in reference:
        if host is None:
            raise SecretError(f"{reference} needs a host to expand {{host}}")
        reference = reference.replace("{host}", host)
    return reference


def env_name(reference: str) -> str:
    path = reference[len(SCHEME) :]
    return "AIFACTORY_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", path).upper()


@dataclass(frozen=True)
class Secret:
    """A resolved value that does not show itself by accident."""

    reference: str
    value: str = field(repr=False)

    def __str__(self) -> str:
        return f"<secret {self.reference}>"


def read_passphrase(passphrase_file: str | os.PathLike[str] | None = None, *, confirm: bool = False) -> bytes:
    source = passphrase_file or os.environ.get("AIFACTORY_PASSPHRASE_FILE")
    if source:
        try:
            data = Path(source).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise SecretError(f"cannot read the passphrase file {source}: {exc.strerror}") from exc
        if not data:
            raise SecretError(f"the passphrase file {source} is empty")
        return data
    if not sys.stdin.isatty():
        raise SecretError(
            "a passphrase is needed and there is no terminal to ask on",
            hint="give it in a file with --passphrase-file or AIFACTORY_PASSPHRASE_FILE",
        )
    first = getpass.getpass("passphrase: ").encode()
    if confirm and getpass.getpass("again: ").encode() != first:
        raise SecretError("the two passphrases differ")
    return first


def derive_key(passphrase: bytes, salt: bytes) -> bytes:
    """A 256-bit AES key from a passphrase and a salt (scrypt, SCRYPT_PARAMS)."""
    return Scrypt(salt=salt, length=32, **SCRYPT_PARAMS).derive(passphrase)


class SecretStore:
    """The encrypted secret store of one site (a JSON map of reference -> value, encrypted)."""

    def __init__(self, path: Path, passphrase: bytes) -> None:
        self.path = path
        self._passphrase = passphrase

    def _load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        try:
            blob = json.loads(self.path.read_text())
            salt = base64.b64decode(blob["salt"])
            nonce = base64.b64decode(blob["nonce"])
            sealed = base64.b64decode(blob["ciphertext"])
        except (OSError, ValueError, KeyError) as exc:
            raise SecretError(f"the secret store {self.path} is damaged: {exc}") from exc
        try:
            plain = AESGCM(derive_key(self._passphrase, salt)).decrypt(nonce, sealed, b"aifactory-secrets")
        except InvalidTag:
            raise SecretError(
                f"cannot open the secret store {self.path}: wrong passphrase or the file was altered"
            ) from None
        data = json.loads(plain)
        return {str(k): str(v) for k, v in data.items()}

    def _save(self, data: dict[str, str]) -> None:
        salt, nonce = os.urandom(16), os.urandom(12)
        sealed = AESGCM(derive_key(self._passphrase, salt)).encrypt(
            nonce, json.dumps(data, sort_keys=True).encode(), b"aifactory-secrets"
        )
        blob = {
            "format": "aifactory.secrets/v1",
            "kdf": {"name": "scrypt", **SCRYPT_PARAMS},
            "cipher": "AES-256-GCM",
            "salt": base64.b64encode(salt).decode(),
            "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(sealed).decode(),
        }
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(blob, handle)
        os.replace(tmp, self.path)

    def set(self, reference: str, value: str) -> None:
        if not well_formed(reference):
            raise SecretError(f"{reference[:80]!r} is not a secret reference (secret://<path>)")
        data = self._load()
        data[reference] = value
        self._save(data)

    def remove(self, reference: str) -> bool:
        data = self._load()
        found = data.pop(reference, None) is not None
        if found:
            self._save(data)
        return found

    def references(self) -> list[str]:
        return sorted(self._load())

    def get(self, reference: str) -> str | None:
        return self._load().get(reference)

    def values(self) -> dict[str, str]:
        """Every reference and its value (for a resolver that opens the store once)."""
        return self._load()


class SecretResolver:
    """Resolves references from the environment, then the store (opened lazily, once)."""

    def __init__(self, store_path: Path | None = None, passphrase_file: str | None = None) -> None:
        self._store_path = store_path
        self._passphrase_file = passphrase_file
        self._cache: dict[str, str] | None = None

    def _store_values(self) -> dict[str, str]:
        if self._cache is None:
            if self._store_path is None or not self._store_path.exists():
                self._cache = {}
            else:
                store = SecretStore(self._store_path, read_passphrase(self._passphrase_file))
                self._cache = store.values()
        return self._cache

    def resolve(self, reference: str, *, host: str | None = None) -> Secret:
        """The value of a reference, for one host when it contains {host}.

        Looked up, in order: the host's own reference (`secret://bmc/lab-cpu-001`) in the
        environment, then in the store; then the reference as written (`secret://bmc/{host}`), one
        value shared by every host, in the environment, then in the store.
        """
        if not well_formed(reference):
            raise SecretError(f"{reference[:80]!r} is not a secret reference (secret://<path>)")
        concrete = expand(reference, host=host)
        candidates = [concrete] if concrete == reference else [concrete, reference]
        for candidate in candidates:
            value = os.environ.get(env_name(candidate))
            if value is None:
                value = self._store_values().get(candidate)
            if value is not None:
                return Secret(concrete, value)
        raise SecretError(
            f"no value for {concrete}",
            hint=f"set {env_name(concrete)} or run `aifactory secret set SITE {concrete}`",
        )
