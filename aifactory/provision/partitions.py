"""InfiniBand partition keys per tenant, and a strict reader of OpenSM's partitions.conf grammar.

Keys are stable: once a tenant has a key it keeps it. A new tenant's key is derived from its name
(so two sites give a tenant the same key when they can) and moves to the next free value only on a
collision with a key already held. The registry of held keys lives in the site's state folder
(`provision/pkeys.json`) and is the one record of who has which key.

OpenSM grammar (opensm/doc/partition-config.txt), as written and read here:

    # comment
    <Name>=<PKey>[,ipoib][,sl=<n>][,mtu=<n>][,rate=<n>][,defmember=full|limited|both] : <members> ;
    members: <member>[,<member>]*   (may be empty)
    member:  <PortGUID>|ALL|ALL_CAS|ALL_SWITCHES|ALL_ROUTERS|SELF [=full|=limited|=both]
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.errors import ProvisionError

DEFAULT_PKEY = 0x7FFF
FIRST_PKEY, LAST_PKEY = 0x0001, 0x7FFE
PKEYS_SCHEMA = "aifactory.pkeys/v1"
SPECIAL_MEMBERS = ("ALL", "ALL_CAS", "ALL_SWITCHES", "ALL_ROUTERS", "SELF")
MEMBERSHIPS = ("full", "limited", "both")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_GUID = re.compile(r"^0x[0-9a-fA-F]{1,16}$")
_FLAGS = {"sl": r"^(?:[0-9]|1[0-5])$", "mtu": r"^[1-5]$", "rate": r"^[0-9]+$", "scope": r"^[0-9]+$"}


def candidate_pkey(tenant: str) -> int:
    span = LAST_PKEY - FIRST_PKEY + 1
    return FIRST_PKEY + int.from_bytes(hashlib.sha256(tenant.encode()).digest()[:4], "big") % span


def assign_pkeys(tenants: list[str], held: dict[str, int] | None = None) -> dict[str, int]:
    """Keys for `tenants`: held keys kept, new tenants (in name order) get their candidate or the
    next free key after it."""
    keys = {t: k for t, k in (held or {}).items()}
    used = set(keys.values())
    for tenant in sorted(set(tenants) - set(keys)):
        key = candidate_pkey(tenant)
        while key in used:
            key = FIRST_PKEY if key >= LAST_PKEY else key + 1
        keys[tenant] = key
        used.add(key)
    return {t: keys[t] for t in sorted(keys)}


def read_registry(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("schema") != PKEYS_SCHEMA:
            raise ValueError(f"schema is {data.get('schema')!r}, expected {PKEYS_SCHEMA}")
        return {str(t): int(str(k), 16) for t, k in data["tenants"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProvisionError(
            f"the partition key registry {path} is damaged: {exc}",
            code="pkey-registry",
            hint="restore it from backup: partition keys must not change",
        ) from None


def write_registry(path: Path, keys: dict[str, int]) -> None:
    body = {"schema": PKEYS_SCHEMA, "tenants": {t: f"0x{k:04x}" for t, k in sorted(keys.items())}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    tmp.replace(path)


@dataclass(frozen=True)
class Partition:
    name: str
    pkey: int
    flags: dict[str, str]
    members: tuple[tuple[str, str], ...]  # (guid or special, membership)


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def parse_partitions_conf(text: str) -> list[Partition]:
    """Read partitions.conf strictly; raise ValueError naming the statement that is wrong."""
    body = _strip_comments(text)
    statements = [s.strip() for s in body.split(";")]
    if statements and statements[-1]:
        raise ValueError(f"statement not terminated by ';': {statements[-1][:60]!r}")
    partitions = [_parse_statement(" ".join(s.split())) for s in statements[:-1] if s]
    seen: dict[int, str] = {}
    for part in partitions:
        if part.pkey in seen:
            raise ValueError(f"pkey 0x{part.pkey:04x} used by both {seen[part.pkey]} and {part.name}")
        seen[part.pkey] = part.name
    return partitions


def _parse_statement(statement: str) -> Partition:
    if statement.count(":") != 1:
        raise ValueError(f"expected exactly one ':' in {statement[:60]!r}")
    head, tail = (p.strip() for p in statement.split(":"))
    fields = [f.strip() for f in head.split(",")]
    if "=" not in fields[0]:
        raise ValueError(f"partition without a pkey: {fields[0]!r}")
    name, pkey_text = (p.strip() for p in fields[0].split("=", 1))
    if not _NAME.match(name):
        raise ValueError(f"bad partition name {name!r}")
    pkey = int(pkey_text, 16) if pkey_text.lower().startswith("0x") else int(pkey_text)
    if not 0 < pkey <= DEFAULT_PKEY:
        raise ValueError(f"pkey {pkey_text} out of range")
    flags: dict[str, str] = {}
    for flag in fields[1:]:
        key, _, value = flag.partition("=")
        if key == "ipoib" and not value:
            flags["ipoib"] = ""
        elif key == "defmember" and value in MEMBERSHIPS:
            flags[key] = value
        elif key in _FLAGS and re.match(_FLAGS[key], value):
            flags[key] = value
        else:
            raise ValueError(f"{name}: unknown or bad flag {flag!r}")
    members: list[tuple[str, str]] = []
    for item in filter(None, (m.strip() for m in tail.split(","))):
        guid, _, membership = (p.strip() for p in item.partition("="))
        if not (guid in SPECIAL_MEMBERS or _GUID.match(guid)):
            raise ValueError(f"{name}: bad member {guid!r}")
        membership = membership or flags.get("defmember", "limited")
        if membership not in MEMBERSHIPS:
            raise ValueError(f"{name}: bad membership {membership!r}")
        members.append((guid, membership))
    return Partition(name, pkey, flags, tuple(members))


def partition_name(tenant: str) -> str:
    return "t_" + tenant.replace("-", "_")


def as_jsonable(partitions: list[Partition]) -> list[dict[str, Any]]:
    return [
        {"name": p.name, "pkey": f"0x{p.pkey:04x}", "flags": p.flags, "members": [list(m) for m in p.members]}
        for p in partitions
    ]
