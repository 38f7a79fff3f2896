"""The allowed_signers file, read as OpenSSH's `ssh-keygen -Y verify` reads it (sshsig.c, 9.x).

Every verifier (bundles, audit reports, tokens, log heads) reads its trust file here, so aifactory
and the stock tool give the same verdict on the same file, signature, signer and time:

    principals [options] keytype base64-key [comment]

- `principals`: a comma-separated pattern list (`*`, `?`, `!` negates) matched against the expected
  signer (ssh-keygen's `-I`). A line whose principals do not match is skipped before anything else
  on it is read; the first line that grants the key wins.
- `options`: comma-separated, names in any case, values in double quotes (`\\"` inside a value):
  `namespaces="pattern-list"` (matched against the signature's namespace),
  `valid-after="TIME"` and `valid-before="TIME"` (both bounds inclusive; TIME is YYYYMMDD,
  YYYYMMDDHHMM or YYYYMMDDHHMMSS, UTC with a trailing `Z` or `UTC`, local time otherwise), and
  `cert-authority`. aifactory signs with plain keys and does not support certificates: a
  cert-authority line never grants a key, and a refusal says so.
- `#` comment lines and blank lines.

A line that cannot be read (an unknown option, an unquoted value, an invalid time, a missing or
malformed key) grants nothing and is skipped, as OpenSSH skips it; a refusal names it.

Lines are read as bytes (Latin-1 here, so one character is one byte, as in C): `?` matches one byte.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aifactory.errors import AifactoryError, Location, SignerUntrusted

MAX_FILE_BYTES = 1 << 20  # a trust file lists keys; anything this large is not one
_WHITESPACE = " \t\r\n"  # OpenSSH's strdelim set
_BLANKS = " \t"  # what ends an options field or separates a key's type from its base64
_MAX_SUBPATTERN = 1023  # OpenSSH gives up (no match) on a longer pattern in a list
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# Key type names OpenSSH reads in these files -> the type name its blob must start with.
_KEY_TYPES = {
    "ssh-ed25519": "ssh-ed25519",
    "ssh-rsa": "ssh-rsa",
    "rsa-sha2-256": "ssh-rsa",
    "rsa-sha2-512": "ssh-rsa",
    "ssh-dss": "ssh-dss",
    "ecdsa-sha2-nistp256": "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384": "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521": "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com": "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com": "sk-ecdsa-sha2-nistp256@openssh.com",
}
_KEY_TYPES |= {
    name.replace("@openssh.com", "") + "-cert-v01@openssh.com": name.replace("@openssh.com", "")
    + "-cert-v01@openssh.com"
    for name in _KEY_TYPES
    if not name.startswith("rsa-sha2")
}


class _LineProblem(AifactoryError):
    """Why OpenSSH would stop at a line (internal control flow out of the option parser: the line's
    SignerLine carries it, and it reaches a command only inside a SignerUntrusted message)."""


@dataclass(frozen=True)
class SignerLine:
    """One non-comment line. `problem` says why OpenSSH cannot read it (such a line grants nothing);
    `principals` is None when the line cannot even be split into fields."""

    number: int
    principals: str | None
    problem: str | None = None
    key_blob: bytes = b""
    cert_authority: bool = False
    namespaces: str | None = None
    valid_after: int | None = None
    valid_before: int | None = None


@dataclass(frozen=True)
class SignerMatch:
    """The line that granted the key: the principal it was checked for and when the grant ends."""

    principal: str
    line: int
    valid_before: int | None


@dataclass(frozen=True)
class AllowedSigners:
    """A parsed allowed_signers file; `check` is `ssh-keygen -Y verify`'s verdict on it."""

    source: str
    lines: tuple[SignerLine, ...]

    @classmethod
    def parse(cls, text: str | bytes, *, source: str = "allowed_signers") -> AllowedSigners:
        data = text.encode() if isinstance(text, str) else text
        lines = (_parse_line(number, raw) for number, raw in _getlines(data.decode("latin-1")))
        return cls(source, tuple(line for line in lines if line is not None))

    @classmethod
    def read(cls, path: Path) -> AllowedSigners:
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise SignerUntrusted(
                f"cannot read the trust file {path}: {exc.strerror}", location=Location(file=str(path))
            ) from None
        if len(data) > MAX_FILE_BYTES:
            raise SignerUntrusted(
                f"the trust file {path} is over {MAX_FILE_BYTES} bytes: not an allowed_signers file",
                location=Location(file=str(path)),
            )
        return cls.parse(data, source=str(path))

    def check(
        self,
        key: Ed25519PublicKey | bytes,
        *,
        principal: str,
        namespace: str,
        at: datetime | int | None = None,
    ) -> SignerMatch:
        """The line granting `key` to `principal` for `namespace` at time `at` (default: now), as
        `ssh-keygen -Y verify -I principal -n namespace -Overify-time=at` decides; SignerUntrusted
        naming the reason otherwise."""
        blob = _blob(key)
        when = _epoch(at)
        wanted = _bytes_text(principal)
        notes: list[str] = []
        for line in self.lines:
            if line.principals is None or line.problem is not None:
                if line.principals is None or _match_list(wanted, line.principals) == 1:
                    notes.append(f"line {line.number} cannot be read ({line.problem}) and was skipped")
                continue
            if _match_list(wanted, line.principals) != 1:
                continue
            note = _refusal(line, blob, namespace=_bytes_text(namespace), when=when)
            if note is None:
                return SignerMatch(principal, line.number, line.valid_before)
            if note:
                notes.append(f"line {line.number}: {note}")
        raise self._untrusted(blob, principal, notes)

    def find_principal(
        self, key: Ed25519PublicKey | bytes, *, namespace: str, at: datetime | int | None = None
    ) -> SignerMatch:
        """The first plain name the file lists for `key` (as `ssh-keygen -Y find-principals` looks
        them up) that `check` accepts: the signer to name when the signed data does not say."""
        blob = _blob(key)
        refusal: SignerUntrusted | None = None
        for name in self._names_for(blob):
            try:
                return self.check(blob, principal=_text(name), namespace=namespace, at=at)
            except SignerUntrusted as exc:
                refusal = refusal or exc
        raise refusal or self._untrusted(blob, None, [])

    def _names_for(self, blob: bytes) -> Iterator[str]:
        seen: set[str] = set()
        for line in self.lines:
            if line.principals is None or line.problem or line.cert_authority or line.key_blob != blob:
                continue
            for name in line.principals.split(","):
                if name and name not in seen and not name.startswith("!") and not set(name) & {"*", "?"}:
                    seen.add(name)
                    yield name

    def _untrusted(self, blob: bytes, principal: str | None, notes: list[str]) -> SignerUntrusted:
        who = f" for signer '{principal}'" if principal is not None else ""
        if notes:
            reason = "; ".join(notes)
            message = f"the signature is valid but {self.source} does not grant its key{who}: {reason}"
        else:
            listed = sorted({line.principals or "" for line in self.lines if line.key_blob == blob})
            elsewhere = f" (it lists the key for {', '.join(_text(p) for p in listed)})" if listed else ""
            message = (
                f"the signature is valid but its key {_fingerprint(blob)} is not trusted{who} "
                f"by {self.source}{elsewhere}"
            )
        return SignerUntrusted(
            message,
            location=Location(file=self.source),
            hint="check that you were given the right allowed_signers file",
        )


# --- reading lines, as sshsig.c's parse_principals_key_and_options does ---------------------------------


def _getlines(text: str) -> Iterator[tuple[int, str]]:
    """Lines as getline(3) returns them: with their newline, cut at a NUL as C strings are."""
    pieces = text.split("\n")
    for number, piece in enumerate(pieces, start=1):
        if number < len(pieces):
            piece += "\n"
        elif not piece:
            return
        yield number, piece.split("\0", 1)[0]


def _parse_line(number: int, raw: str) -> SignerLine | None:
    rest = raw.lstrip(_BLANKS)
    if not rest or rest.startswith("#"):
        return None
    principals, after = _first_field(rest)
    if principals is None or after is None:
        return SignerLine(number, None, "invalid line (no key after the principals, or an unmatched quote)")
    try:
        blob, options_field = _key_and_options(after)
        options = _parse_options(options_field)
    except _LineProblem as problem:
        return SignerLine(number, principals, str(problem))
    return SignerLine(
        number,
        principals,
        key_blob=blob,
        cert_authority=options.cert_authority,
        namespaces=options.namespaces,
        valid_after=options.valid_after,
        valid_before=options.valid_before,
    )


def _first_field(text: str) -> tuple[str | None, str | None]:
    """(field, rest) as OpenSSH's strdelimw splits them; rest None when nothing follows the field."""
    at = next((i for i, c in enumerate(text) if c in _WHITESPACE or c == '"'), None)
    if at is None:
        return text, None
    if text[at] == '"':
        unquoted = text[:at] + text[at + 1 :]
        end = unquoted.find('"', at)
        if end < 0:
            return None, None
        return unquoted[:end], unquoted[end + 1 :].lstrip(_WHITESPACE)
    return text[:at], text[at + 1 :].lstrip(_WHITESPACE)


def _key_and_options(text: str) -> tuple[bytes, str]:
    """(key blob, options field) of what follows the principals."""
    blob = _read_key(text)
    if blob is not None:
        return blob, ""
    end = _past_options(text)
    if end == len(text):
        raise _LineProblem("missing key")
    blob = _read_key(text[end + 1 :].lstrip(_BLANKS))
    if blob is None:
        raise _LineProblem("invalid key")
    return blob, text[:end]


def _past_options(text: str) -> int:
    quoted, index = False, 0
    while index < len(text) and (quoted or text[index] not in _BLANKS):
        if text[index] == "\\" and text[index + 1 : index + 2] == '"':
            index += 1
        elif text[index] == '"':
            quoted = not quoted
        index += 1
    if quoted:
        raise _LineProblem("invalid options (an unmatched quote)")
    return index


def _read_key(text: str) -> bytes | None:
    """The key blob of `keytype base64...` at the start of `text`, or None (as sshkey_read fails)."""
    space = next((i for i, c in enumerate(text) if c in _BLANKS), None)
    if space is None or text[:space] not in _KEY_TYPES:
        return None
    encoded = text[space:].lstrip(_BLANKS)
    encoded = re.split(f"[{_BLANKS}]", encoded, maxsplit=1)[0]
    try:
        blob = base64.b64decode(re.sub(r"[\r\n\v\f]", "", encoded), validate=True)
    except ValueError:
        return None
    return blob if _blob_is(blob, _KEY_TYPES[text[:space]]) else None


def _blob_is(blob: bytes, type_name: str) -> bool:
    fields = list(_ssh_strings(blob))
    if not fields or fields[0] != type_name.encode():
        return False
    if type_name == "ssh-ed25519":
        return len(fields) == 2 and len(fields[1]) == 32
    return True


def _ssh_strings(blob: bytes) -> Iterator[bytes]:
    offset = 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            return
        (length,) = struct.unpack_from(">I", blob, offset)
        if offset + 4 + length > len(blob):
            return
        yield blob[offset + 4 : offset + 4 + length]
        offset += 4 + length


# --- options, as sshsig.c's sshsigopt_parse reads them ---------------------------------------------------


@dataclass
class _Options:
    cert_authority: bool = False
    namespaces: str | None = None
    valid_after: int | None = None
    valid_before: int | None = None


def _parse_options(text: str) -> _Options:
    found = _Options()
    index = 0
    while index < len(text):
        lowered = text[index:].translate(_ASCII_LOWER)
        if lowered.startswith("cert-authority"):
            found.cert_authority = True
            index += len("cert-authority")
        elif lowered.startswith("namespaces="):
            if found.namespaces is not None:
                raise _LineProblem('bad options: multiple "namespaces" clauses')
            found.namespaces, index = _dequote(text, index + len("namespaces="))
        elif lowered.startswith("valid-after="):
            if found.valid_after is not None:
                raise _LineProblem('bad options: multiple "valid-after" clauses')
            found.valid_after, index = _dequote_time(text, index + len("valid-after="), "valid-after")
        elif lowered.startswith("valid-before="):
            if found.valid_before is not None:
                raise _LineProblem('bad options: multiple "valid-before" clauses')
            found.valid_before, index = _dequote_time(text, index + len("valid-before="), "valid-before")
        else:
            raise _LineProblem(f"bad options: unsupported option at {_text(text[index:])!r}")
        if index == len(text):
            break
        if text[index] != ",":
            raise _LineProblem(f"bad options: unknown key option at {_text(text[index:])!r}")
        index += 1
        if index == len(text):
            raise _LineProblem("bad options: unexpected end-of-options")
    if found.valid_after and found.valid_before and found.valid_before <= found.valid_after:
        raise _LineProblem('bad options: "valid-before" time is before "valid-after"')
    return found


def _dequote_time(text: str, index: int, label: str) -> tuple[int, int]:
    value, index = _dequote(text, index)
    seconds = parse_time(value)
    if not seconds:  # OpenSSH takes 0 (the epoch itself) for "unset" and refuses it as well
        raise _LineProblem(f'bad options: invalid "{label}" time {_text(value)!r}')
    return seconds, index


def _dequote(text: str, index: int) -> tuple[str, int]:
    if text[index : index + 1] != '"':
        raise _LineProblem("bad options: missing start quote (option values are written in double quotes)")
    value: list[str] = []
    index += 1
    while index < len(text) and text[index] != '"':
        if text[index] == "\\" and text[index + 1 : index + 2] == '"':
            index += 1
        value.append(text[index])
        index += 1
    if index == len(text):
        raise _LineProblem("bad options: missing end quote")
    return "".join(value), index + 1


def parse_time(text: str) -> int | None:
    """Seconds since the epoch for YYYYMMDD[HHMM[SS]] with an optional `Z`/`UTC` (else local time),
    as OpenSSH's parse_absolute_time reads it; None when it is not such a time (or before 1970)."""
    utc = False
    if len(text) > 1 and text[-1] in "zZ":
        utc, text = True, text[:-1]
    elif len(text) > 3 and text[-3:].translate(_ASCII_LOWER) == "utc":
        utc, text = True, text[:-3]
    if len(text) not in (8, 12, 14) or not re.fullmatch(r"[0-9]+", text):
        return None
    year, month, day = int(text[:4]), int(text[4:6]), int(text[6:8])
    hour, minute, second = int(text[8:10] or 0), int(text[10:12] or 0), int(text[12:14] or 0)
    # strptime's ranges; the day is not checked against the month (mktime carries it over).
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 61):
        return None
    fields = (year, month, day, hour, minute, second, 0, 0, 0)
    try:
        seconds = int(calendar.timegm(fields) if utc else time.mktime(fields))
    except (ValueError, OverflowError):
        return None
    return seconds if seconds >= 0 else None


def _refusal(line: SignerLine, blob: bytes, *, namespace: str, when: int) -> str | None:
    """None when the line grants the key; otherwise why not ("" when the line is for another key)."""
    if line.cert_authority:
        return (
            "cert-authority: aifactory does not support certificates "
            "(list the signing key itself, without cert-authority)"
        )
    if line.key_blob != blob:
        return ""
    if line.namespaces is not None and _match_list(namespace, line.namespaces) != 1:
        return f"namespace '{_text(namespace)}' is not in namespaces=\"{_text(line.namespaces)}\""
    if line.valid_after is not None and when < line.valid_after:
        return f"not valid before {_stamp(line.valid_after)} (checked at {_stamp(when)})"
    if line.valid_before is not None and when > line.valid_before:
        return f"expired at {_stamp(line.valid_before)} (checked at {_stamp(when)})"
    return None


# --- patterns, as OpenSSH's match.c matches them ----------------------------------------------------------


def _match_list(value: str, patterns: str) -> int:
    """1: a pattern matches and no negated one does; -1: a negated pattern matches; 0: none does."""
    positive = 0
    index = 0
    while index < len(patterns):
        negated = patterns[index] == "!"
        index += negated
        end = patterns.find(",", index)
        end = len(patterns) if end < 0 else end
        pattern = patterns[index:end]
        if len(pattern) >= _MAX_SUBPATTERN:
            return 0
        index = end + 1 if end < len(patterns) else end
        if _match(value, pattern):
            if negated:
                return -1
            positive = 1
    return positive


def _match(value: str, pattern: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


# --- small conversions -------------------------------------------------------------------------------------


def _blob(key: Ed25519PublicKey | bytes) -> bytes:
    if isinstance(key, bytes):
        return key
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    name = b"ssh-ed25519"
    return struct.pack(">I", len(name)) + name + struct.pack(">I", len(raw)) + raw


def _fingerprint(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _epoch(at: datetime | int | None) -> int:
    if at is None:
        return int(time.time())
    if isinstance(at, datetime):
        return int(at.timestamp())
    return int(at)


def _stamp(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _bytes_text(text: str) -> str:
    """A caller's text in this module's one-character-per-byte form."""
    return text.encode().decode("latin-1")


def _text(raw: str) -> str:
    """This module's one-character-per-byte form back to text, for messages and results."""
    return raw.encode("latin-1").decode(errors="replace")
