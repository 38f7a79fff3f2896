"""The grammar of every string in a site spec (docs/site-spec.md, "The grammar of strings").

Spec strings end up in Ansible variables, Jinja templates, systemd units, exports(5), modprobe and
Slurm files: every one therefore has a grammar made of tokens that are inert in all of those
formats. Free text is allowed only in description fields, and even there no control character
(NUL, ESC, newline...), no line or paragraph separator, no bidirectional override and no template
delimiter (`{{`, `{%`, `{#`) may appear.

Each grammar is one regular expression that three engines read alike: pydantic's (Rust's `regex`,
linear time), Python's `re` and the ECMA-262 engines of editors reading the JSON Schema. So the
patterns use no look-around and no back-reference, and are written so that Python's backtracking
stays linear on any input.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Characters no spec string may hold: C0 and C1 controls and DEL, U+2028/U+2029 (line breaks to
# YAML and JavaScript), and the bidirectional controls that make text read differently than it runs.
FORBIDDEN_CHARS = "\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069"
_FORBIDDEN = re.compile("[" + FORBIDDEN_CHARS + "]")
_DELIMITER = re.compile(r"\{[{%#]")

# Free text: any character but the forbidden ones, and a `{` never followed by `{`, `%` or `#`.
TEXT_PATTERN = "^([^{" + FORBIDDEN_CHARS + "]|\\{[^{%#" + FORBIDDEN_CHARS + "])*\\{?$"

# One path component: letters, digits, `_`, `-`, and single dots between them (so no `..`).
_COMPONENT = r"\.?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?"
_PATH = rf"(/{_COMPONENT})+"
PATH_PATTERN = rf"^{_PATH}$"

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = rf"({_LABEL}(\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])"
_PORT = r"[0-9]{1,5}"
_HOST_PORT = rf"{_HOST}(:{_PORT})?"
_SERVER_PATH = rf"(/|{_PATH})"
_URL = rf"https?://{_HOST_PORT}(/|{_PATH})?"
_NID = rf"{_HOST}@[a-z][a-z0-9]*"

# Endpoints per storage kind (the server side of the storage).
STORAGE_ENDPOINT_PATTERNS: dict[str, str] = {
    # NFS: server:/export
    "nfs": rf"^{_HOST}:{_SERVER_PATH}$",
    # Lustre: MGS NIDs (`,` between NIDs of one MGS, `:` between failover MGSs), then :/fsname
    "lustre": rf"^{_NID}(,{_NID})*(:{_NID}(,{_NID})*)*:{_PATH}$",
    # Ceph: monitors, then optionally :/path inside CephFS
    "ceph": rf"^{_HOST_PORT}(,{_HOST_PORT})*(:{_SERVER_PATH})?$",
    # WEKA: backends, then /filesystem
    "weka": rf"^{_HOST}(,{_HOST})*/[A-Za-z0-9_-]+$",
    # S3: the service URL
    "s3": rf"^{_URL}$",
}
STORAGE_ENDPOINT_TEXT: dict[str, str] = {
    "nfs": "server:/path (e.g. nfs1.example:/export or 10.0.0.5:/lake)",
    "lustre": "MGS NIDs then :/fsname (e.g. 10.48.0.2@o2ib,10.48.0.3@o2ib:/lake)",
    "ceph": "monitors, optionally with ports, then optionally :/path (e.g. 10.0.0.1,10.0.0.2:6789:/)",
    "weka": "backends then /filesystem (e.g. weka1,weka2/default)",
    "s3": "an http(s) URL (e.g. https://s3.site.example)",
}


@dataclass(frozen=True)
class Grammar:
    """One kind of spec string: its pattern, its length bound and how the docs name it."""

    name: str
    pattern: str
    max_length: int
    text: str  # "must be <text>"


NAME = Grammar(
    "name",
    r"^[a-z][a-z0-9-]{0,19}$",
    20,
    "a name: a lowercase letter, then lowercase letters, digits or '-', at most 20 characters",
)
COUNTRY = Grammar("country", r"^[A-Z]{2}$", 2, "an ISO 3166-1 alpha-2 country code such as NG or DE")
PLACE = Grammar(
    "place", r"^[A-Z][A-Z0-9-]{1,19}$", 20, "a place: a country code such as NG or a bloc such as EU"
)
REGION = Grammar("region", r"^[A-Z]{2}-[A-Z0-9]{1,3}$", 6, "an ISO 3166-2 region code such as NG-FC")
RESOURCE = Grammar(
    "resource", r"^(dataset|model)/[a-z][a-z0-9-]{0,19}$", 26, "dataset/<name> or model/<name>"
)
# A secret reference: path segments without `..` or `//`; `{host}` is the only placeholder.
_SECRET_SEGMENT = r"([A-Za-z0-9_-]|\{host\})+(\.([A-Za-z0-9_-]|\{host\})+)*"
SECRET = Grammar("secret", rf"^secret://{_SECRET_SEGMENT}(/{_SECRET_SEGMENT})*$", 255, "secret://<path>")
PATH = Grammar(
    "path",
    PATH_PATTERN,
    255,
    "an absolute path such as /data/set-1: '/' then letters, digits, '.', '_', '-' (no '//', no '..')",
)
CIDR = Grammar("cidr", r"^[0-9A-Fa-f:.]+/[0-9]{1,3}$", 64, "an IPv4 or IPv6 network such as 10.20.0.0/16")
CURRENCY = Grammar("currency", r"^[A-Z]{3}$", 3, "an ISO 4217 currency code such as EUR, NGN or USD")
HARDWARE_MODEL = Grammar(
    "hardware-model",
    r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$",
    64,
    "a hardware model name such as H100-SXM5-80GB: letters, digits, '.', '_', '+', '-' (no spaces)",
)
EMAIL = Grammar(
    "email", rf"^[A-Za-z0-9._%+-]{{1,64}}@{_HOST}$", 254, "an email address such as ciso@agency.example"
)
STORAGE_ENDPOINT = Grammar(
    "storage-endpoint",
    r"^[A-Za-z0-9._~:/@,\[\]-]+$",
    255,
    "a storage endpoint: letters, digits and . _ ~ : / @ , [ ] -",
)
EGRESS_ENDPOINT = Grammar(
    "egress-endpoint",
    rf"^({_HOST}:{_PORT}|{_URL})$",
    255,
    "host:port or an http(s) URL such as https://mirror.example/debian",
)
HEALTH_CHECK = Grammar(
    "health-check",
    r"^[a-z][a-z0-9-]{0,39}$",
    40,
    "a health check's name such as tcp-bandwidth (docs/health.md)",
)
METRIC = Grammar(
    "metric",
    r"^[a-z][a-z0-9_-]{0,39}$",
    40,
    "a metric's name such as accuracy or log-loss: a lowercase letter, then lowercase letters, digits, "
    "'_' or '-', at most 40 characters",
)
DIGEST = Grammar(
    "digest", r"^sha256:[0-9a-f]{64}$", 71, "a digest: sha256: then 64 lowercase hexadecimal digits"
)
# A loop's schedule: a few forms, each with one meaning as a systemd calendar expression (the plan
# writes it, plan/build.py). Not systemd's own syntax, whose `..` ranges and `/` steps read like paths,
# and whose unit files expand `%`: here every character is inert wherever the value goes.
_WEEKDAY = "(Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_CLOCK = "([01][0-9]|2[0-3]):[0-5][0-9]"
SCHEDULE = Grammar(
    "schedule",
    rf"^(hourly|daily|weekly|monthly|daily {_CLOCK}|{_WEEKDAY}(,{_WEEKDAY}){{0,6}} {_CLOCK})$",
    40,
    "a schedule: hourly, daily, weekly, monthly, 'daily HH:MM', or days and a time such as 'Mon,Thu 02:30'",
)
TEXT = Grammar(
    "text",
    TEXT_PATTERN,
    500,
    "text without control characters or template delimiters, at most 500 characters",
)

GRAMMARS: dict[str, Grammar] = {
    g.pattern: g
    for g in (NAME, COUNTRY, PLACE, REGION, RESOURCE, SECRET, PATH, CIDR, HARDWARE_MODEL, EMAIL)
    + (STORAGE_ENDPOINT, EGRESS_ENDPOINT, HEALTH_CHECK, CURRENCY, METRIC, DIGEST, SCHEDULE, TEXT)
}


def matches(grammar: Grammar | str, value: str) -> bool:
    """Whether a value is in a grammar (a Grammar, or a pattern)."""
    pattern = grammar.pattern if isinstance(grammar, Grammar) else grammar
    limit = grammar.max_length if isinstance(grammar, Grammar) else None
    return (limit is None or len(value) <= limit) and re.fullmatch(pattern, value) is not None


def char_name(char: str) -> str:
    """U+000A (LINE FEED): how a message shows a character it must not print."""
    name = unicodedata.name(char, "") or {"\n": "LINE FEED", "\r": "CARRIAGE RETURN", "\t": "TAB"}.get(
        char, ""
    )
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


def why_not(grammar: Grammar, value: str) -> tuple[str, str]:
    """(code, message) saying why a string is outside its grammar, most dangerous reason first."""
    bad = _FORBIDDEN.search(value)
    if bad:
        return "control-character", f"must not contain control characters; found {char_name(bad.group())}"
    delimiter = _DELIMITER.search(value)
    if delimiter:
        return "template-delimiter", f"must not contain a template delimiter; found '{delimiter.group()}'"
    if len(value) > grammar.max_length:
        return "too-long", (
            f"must be {grammar.text} (at most {grammar.max_length} characters); "
            f"found {shown(value)} ({len(value):,} characters)"
        )
    if grammar is PATH:
        if not value.startswith("/"):
            return "relative-path", f"{shown(value)} must be an absolute path"
        if "//" in value:
            return "bad-path", f"{shown(value)} must not contain '//'"
        if ".." in value:
            return "dotdot-path", f"{shown(value)} must not contain '..'"
        if value == "/" or value.endswith("/"):
            return "bad-path", f"{shown(value)} must name a folder below / without a trailing '/'"
    return "bad-format", f"must be {grammar.text}; found {shown(value)}"


def shown(value: str, limit: int = 60) -> str:
    """A value as a message may show it: quoted, escaped, and cut short."""
    text = value if len(value) <= limit else value[:limit] + "..."
    return repr(text)


def printable(text: str) -> str:
    """Text with every forbidden character written as an escape (`\\x1b`), for messages."""
    return _FORBIDDEN.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
