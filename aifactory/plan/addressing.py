"""Stable address allocation: addresses never move once given.

Each fabric's address space is handed out in *extents* (a start offset and a length) to owners:
`hosts:<pool>` (the pool's hosts, `rails` addresses per host) and `bmc:<pool>` (the pool's BMCs).
The extents are recorded in an allocation lock file kept beside the spec (`site.alloc.json` for
`site.yaml`), which the next plan honours:

- a pool that grows keeps its extents and gets one more from the free space;
- a pool added anywhere in the spec is allocated from the free space, never from another's;
- a pool that shrinks keeps its extents, so growing back restores the same addresses;
- a removed pool's extents are released (the next new owner may reuse them).

Host k of a pool (0-based) on rail r takes slot k*rails + r of its owner's extents, in order.
Offsets 0 (the network) and 1 (the gateway) are reserved, and on IPv4 the broadcast address.
A fabric whose CIDR changes keeps its extents when the new network starts at the same address and
they still fit (a wider prefix keeps every address); otherwise that fabric is allocated afresh.
Without a lock file the allocation is still deterministic: owners are served in spec order.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifactory.errors import Location, SpecError

LOCK_SCHEMA = "aifactory.alloc/v1"
GATEWAY_OFFSET = 1


@dataclass
class FabricSpace:
    """One fabric's allocations: owner -> list of [start, length] extents."""

    cidr: str
    owners: dict[str, list[list[int]]] = field(default_factory=dict)


@dataclass
class AllocationLock:
    site: str
    fabrics: dict[str, FabricSpace] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path, site: str) -> AllocationLock:
        return cls.parse(path.read_text() if path.exists() else None, path, site)

    @classmethod
    def parse(cls, text: str | None, path: Path, site: str) -> AllocationLock:
        """A lock from its file's text (None: no lock file yet); `path` only names it in errors."""
        if text is None:
            return cls(site)
        try:
            raw = json.loads(text)
            if raw.get("schema") != LOCK_SCHEMA:
                raise ValueError(f"schema is {raw.get('schema')!r}, expected {LOCK_SCHEMA!r}")
            fabrics = {
                name: FabricSpace(
                    str(body["cidr"]),
                    {o: [[int(s), int(n)] for s, n in ext] for o, ext in body["owners"].items()},
                )
                for name, body in raw["fabrics"].items()
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SpecError(
                f"the allocation lock file is damaged: {exc}",
                location=Location(file=str(path)),
                code="bad-alloc-lock",
                hint="restore it from version control; deleting it may renumber hosts",
            ) from None
        return cls(site, fabrics)

    def to_json(self) -> str:
        """Stable text: one line per owner, so a review shows exactly which extents changed."""
        lines = [
            "{",
            f' "schema": {json.dumps(LOCK_SCHEMA)},',
            ' "about": "Address allocations of this site: keep it beside the spec, under version control. '
            'Deleting it may renumber hosts.",',
            f' "site": {json.dumps(self.site)},',
            ' "fabrics": {',
        ]
        fabric_items = sorted(self.fabrics.items())
        for f_index, (name, space) in enumerate(fabric_items):
            lines.append(f'  {json.dumps(name)}: {{"cidr": {json.dumps(space.cidr)}, "owners": {{')
            owners = sorted(space.owners)
            for o_index, owner in enumerate(owners):
                comma = "," if o_index < len(owners) - 1 else ""
                lines.append(f"   {json.dumps(owner)}: {json.dumps(space.owners[owner])}{comma}")
            lines.append("  }}" + ("," if f_index < len(fabric_items) - 1 else ""))
        lines += [" }", "}"]
        return "\n".join(lines) + "\n"


def lock_path_for(spec_path: Path) -> Path:
    return spec_path.with_name(spec_path.stem + ".alloc.json")


@dataclass(frozen=True)
class OwnerDemand:
    owner: str  # "hosts:<pool>" or "bmc:<pool>"
    size: int  # addresses needed


class FabricAllocator:
    """Allocates one fabric's demands against its lock entry and formats addresses fast."""

    def __init__(self, name: str, cidr: str, space: FabricSpace | None) -> None:
        self.name = name
        self.network = ipaddress.ip_network(cidr)
        self.version = self.network.version
        self.base = int(self.network.network_address)
        total = self.network.num_addresses
        self.limit = total - 1 if self.version == 4 else total  # exclusive end of usable offsets
        self.first = GATEWAY_OFFSET + 1
        kept = space if space is not None and self._keeps(space) else None
        self.space = FabricSpace(
            str(self.network),
            {} if kept is None else {o: [list(e) for e in x] for o, x in kept.owners.items()},
        )
        self._format = _formatter(self.version)

    def _keeps(self, space: FabricSpace) -> bool:
        """Whether the lock's extents still mean the same addresses on this network.

        They do when the network starts where the locked one did and every extent still fits:
        widening a fabric's prefix (the hint for a full fabric) keeps every address.
        """
        try:
            locked = ipaddress.ip_network(space.cidr)
        except ValueError:
            return False
        if locked.version != self.version or int(locked.network_address) != self.base:
            return False
        ends = [start + length for extents in space.owners.values() for start, length in extents]
        starts = [start for extents in space.owners.values() for start, _ in extents]
        return all(end <= self.limit for end in ends) and all(start >= self.first for start in starts)

    @property
    def gateway(self) -> str:
        return self._format(self.base + GATEWAY_OFFSET)

    def allocate(self, demands: Sequence[OwnerDemand]) -> None:
        wanted = {d.owner for d in demands}
        for owner in [o for o in self.space.owners if o not in wanted]:
            del self.space.owners[owner]  # released: the pool left the spec or this fabric
        for demand in demands:
            extents = self.space.owners.setdefault(demand.owner, [])
            have = sum(length for _, length in extents)
            if demand.size > have:
                self._grow(demand, extents, demand.size - have)

    def _grow(self, demand: OwnerDemand, extents: list[list[int]], missing: int) -> None:
        used = sorted((s, s + n) for ext in self.space.owners.values() for s, n in ext)
        cursor = self.first
        gaps: list[tuple[int, int]] = []
        for start, end in used:
            if start > cursor:
                gaps.append((cursor, start))
            cursor = max(cursor, end)
        if cursor < self.limit:
            gaps.append((cursor, self.limit))
        for start, end in gaps:
            if missing <= 0:
                break
            take = min(missing, end - start)
            if extents and extents[-1][0] + extents[-1][1] == start:
                extents[-1][1] += take  # contiguous with our last extent: extend it
            else:
                extents.append([start, take])
            missing -= take
        if missing > 0:
            raise SpecError(
                f"fabric '{self.name}' ({self.network}) has no room left for {demand.owner}: "
                f"{missing} more address(es) needed",
                code="fabric-full",
                hint="use a larger prefix for the fabric",
            )

    def addresses(self, owner: str, count: int) -> list[str]:
        """The first `count` addresses of an owner, in slot order."""
        out: list[str] = []
        for start, length in self.space.owners.get(owner, []):
            take = min(length, count - len(out))
            out.extend(self._format_range(self.base + start, self.base + start + take))
            if len(out) >= count:
                break
        return out

    def _format_range(self, first: int, stop: int) -> list[str]:
        """Addresses first..stop-1 as text, without an ipaddress object per address."""
        if self.version != 4:
            return [self._format(value) for value in range(first, stop)]
        out: list[str] = []
        value = first
        while value < stop:
            block_end = min(stop, (value | 0xFF) + 1)  # the rest of this /24
            prefix = socket.inet_ntoa(struct.pack("!I", value))
            prefix = prefix[: prefix.rfind(".") + 1]
            out.extend([prefix + str(last) for last in range(value & 0xFF, (block_end - 1 & 0xFF) + 1)])
            value = block_end
        return out


def _formatter(version: int) -> Callable[[int], str]:
    if version == 4:
        pack, ntoa = struct.Struct("!I").pack, socket.inet_ntoa
        return lambda value: ntoa(pack(value))
    return lambda value: str(ipaddress.IPv6Address(value))


def owner_key(kind: str, pool: str) -> str:
    return f"{kind}:{pool}"


def lock_snapshot(site: str, allocators: dict[str, FabricAllocator]) -> AllocationLock:
    return AllocationLock(site, {name: a.space for name, a in allocators.items()})


def as_dict(lock: AllocationLock) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(lock.to_json())  # to_json writes one JSON object
    return document
