"""PROXY protocol version 2, the receiving side: what the front door (HAProxy, `send-proxy-v2`) says
about the client before the client's own bytes (docs/runtime.md, "Front door").

The header is binary: a 12-byte signature, a version/command byte, a family/protocol byte, a 16-bit
length, then that many bytes: the addresses, then TLVs (type, 16-bit length, value). This parser takes
only what the front door sends and refuses everything else, so a header can never make the server
read more than `MAX_PAYLOAD` bytes or trust an address it did not get whole:

- version 2 only (the text version 1 is another format altogether), command `PROXY` or `LOCAL`;
- with `PROXY`, TCP over IPv4 or IPv6 only (`0x11`, `0x21`), and a length that holds the addresses;
- with `LOCAL` (HAProxy's own health checks), the address block is ignored, as the specification
  says, and the connection's own peer stands;
- TLVs are walked to check that each one fits, then skipped: the server trusts no TLV (the client
  certificate reaches it through TLS, end to end, not through the front door's word).

Why not a library: the one PROXY protocol package on PyPI (`proxy-protocol`, last release 2024-04,
marked alpha) accepts UDP and unknown families, does not bound the length, and lets `struct.error`
escape on short address blocks; this module is the small strict subset the server needs.

`read_header` reads the header from the socket itself, byte-exact (exactly 16 bytes, then exactly the
announced length): the bytes after it are the client's TLS handshake, which must reach the TLS layer
untouched.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Literal

from aifactory.errors import ProxyHeaderRefused

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED_SIZE = 16  # signature, version/command, family/protocol, length
# What the front door sends is the addresses (12 or 36 bytes) and, at most, a few short TLVs: a longer
# header is refused rather than read (the field allows 65,535).
MAX_PAYLOAD = 512
_VERSION_2 = 0x20
_COMMANDS: dict[int, Literal["local", "proxy"]] = {0x0: "local", 0x1: "proxy"}
# family/protocol byte -> (address size, bytes of the address block)
_TCP_FAMILIES = {0x11: (4, 12), 0x21: (16, 36)}
_TLV_HEAD = 3  # type (1 byte), length (2 bytes)


@dataclass(frozen=True)
class ProxyHeader:
    """What one header says: `source` is the client (address, port); None for a `LOCAL` header."""

    command: Literal["local", "proxy"]
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None
    size: int = FIXED_SIZE  # bytes the header took on the wire


def payload_length(fixed: bytes) -> tuple[Literal["local", "proxy"], int, int]:
    """Check the fixed 16 bytes; (command, family/protocol byte, length of what follows)."""
    if len(fixed) != FIXED_SIZE:
        raise ProxyHeaderRefused(
            "truncated", f"a PROXY v2 header has {FIXED_SIZE} fixed bytes, got {len(fixed)}"
        )
    if fixed[:12] != SIGNATURE:
        raise ProxyHeaderRefused("bad-signature", "not a PROXY protocol v2 header (signature)")
    version, command_bits = fixed[12] & 0xF0, fixed[12] & 0x0F
    if version != _VERSION_2:
        raise ProxyHeaderRefused("bad-version", f"PROXY protocol version {version >> 4}, not 2")
    command = _COMMANDS.get(command_bits)
    if command is None:
        raise ProxyHeaderRefused(
            "bad-command", f"PROXY v2 command {command_bits:#x} is neither LOCAL nor PROXY"
        )
    family = fixed[13]
    (length,) = struct.unpack("!H", fixed[14:16])
    if length > MAX_PAYLOAD:
        raise ProxyHeaderRefused(
            "too-long", f"PROXY v2 header announces {length} bytes (at most {MAX_PAYLOAD})"
        )
    if command == "proxy":
        if family not in _TCP_FAMILIES:
            raise ProxyHeaderRefused(
                "bad-family", f"PROXY v2 family/protocol {family:#04x} is not TCP over IPv4/IPv6"
            )
        if length < _TCP_FAMILIES[family][1]:
            raise ProxyHeaderRefused(
                "too-short", f"PROXY v2 header of {length} bytes cannot hold its addresses"
            )
    return command, family, length


def parse(data: bytes) -> ProxyHeader:
    """One whole header (the fixed part and exactly the length it announces)."""
    command, family, length = payload_length(data[:FIXED_SIZE])
    payload = data[FIXED_SIZE:]
    if len(payload) != length:
        raise ProxyHeaderRefused("truncated", f"PROXY v2 header announces {length} bytes, got {len(payload)}")
    if command == "local":  # the front door speaking for itself: the address block is not read
        return ProxyHeader("local", size=FIXED_SIZE + length)
    size, block = _TCP_FAMILIES[family]
    source = ipaddress.ip_address(payload[:size])
    destination = ipaddress.ip_address(payload[size : 2 * size])
    source_port, destination_port = struct.unpack("!HH", payload[2 * size : block])
    _check_tlvs(payload[block:])
    return ProxyHeader(
        "proxy",
        (str(source), source_port),
        (str(destination), destination_port),
        FIXED_SIZE + length,
    )


def _check_tlvs(tlvs: bytes) -> None:
    """Every TLV must fit in what is left; none is read (the server trusts none of them)."""
    at = 0
    while at < len(tlvs):
        if len(tlvs) - at < _TLV_HEAD:
            raise ProxyHeaderRefused("bad-tlv", f"PROXY v2 TLV at byte {at} is cut short")
        (value_length,) = struct.unpack("!H", tlvs[at + 1 : at + 3])
        at += _TLV_HEAD + value_length
        if at > len(tlvs):
            raise ProxyHeaderRefused("bad-tlv", "PROXY v2 TLV runs past the header's end")


async def read_header(raw: socket.socket) -> ProxyHeader:
    """Read one header from a non-blocking socket: exactly its bytes, never one of the client's own."""
    fixed = await _read_exactly(raw, FIXED_SIZE)
    _, _, length = payload_length(fixed)
    return parse(fixed + await _read_exactly(raw, length))


async def _read_exactly(raw: socket.socket, count: int) -> bytes:
    loop = asyncio.get_running_loop()
    parts: list[bytes] = []
    wanted = count
    while wanted:
        part = await loop.sock_recv(raw, wanted)  # at most `wanted`: nothing past the header is taken
        if not part:
            raise ProxyHeaderRefused("truncated", "the connection ended inside its PROXY v2 header")
        parts.append(part)
        wanted -= len(part)
    return b"".join(parts)


def encode(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A PROXY v2 header for TCP from `source` to `destination` (what HAProxy sends; tests use it)."""
    client, server = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if client.version != server.version:
        raise ValueError("source and destination must be of one IP version")
    family = 0x11 if client.version == 4 else 0x21
    block = client.packed + server.packed + struct.pack("!HH", source[1], destination[1])
    return SIGNATURE + bytes([_VERSION_2 | 0x1, family]) + struct.pack("!H", len(block)) + block
