"""The PROXY protocol v2 parser the server reads the front door's header with (`runtime.proxy_protocol`).

What the server relies on: a header HAProxy sends gives the client's address; a LOCAL header (HAProxy's
health check) gives none; anything else (another version, command, family, a length past the bound, a
header cut short, a TLV that runs past the end) is refused with a reason code; and reading a header
from a socket takes exactly its bytes, leaving the client's own (its TLS handshake) unread.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from aifactory.errors import ProxyHeaderRefused
from aifactory.runtime.proxy_protocol import MAX_PAYLOAD, SIGNATURE, ProxyHeader, encode, parse, read_header

CLIENT, SERVER = ("192.0.2.7", 51234), ("10.200.0.3", 8601)


def _header(command_byte: int, family: int, payload: bytes, *, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return SIGNATURE + bytes([command_byte, family]) + struct.pack("!H", size) + payload


def _tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def test_a_tcp4_header_gives_the_clients_address_and_port() -> None:
    assert parse(encode(CLIENT, SERVER)) == ProxyHeader("proxy", CLIENT, SERVER, 28)


def test_a_tcp6_header_gives_the_clients_address() -> None:
    header = parse(encode(("2001:db8::7", 40000), ("2001:db8::1", 8601)))
    assert (header.source, header.size) == (("2001:db8::7", 40000), 52)


def test_tlvs_are_skipped_and_the_addresses_still_read() -> None:
    """HAProxy may add TLVs (a unique id, the authority, padding); none of them is trusted."""
    addresses = encode(CLIENT, SERVER)[16:]
    tlvs = _tlv(0x05, b"req-1") + _tlv(0x04, b"\x00" * 7) + _tlv(0x02, b"")
    assert parse(_header(0x21, 0x11, addresses + tlvs)).source == CLIENT


def test_a_local_header_names_no_client() -> None:
    """LOCAL: the front door's own connection (its health check); its address block is not read."""
    assert parse(_header(0x20, 0x00, b"")) == ProxyHeader("local", None, None, 16)
    assert parse(_header(0x20, 0x11, b"\xff" * 12)).source is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"PROXY TCP4 192.0.2.7 10.200.0.3 51234 8601\r\n", "bad-signature"),  # version 1, text
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 5, "bad-signature"),  # a ClientHello
        (SIGNATURE[:-1] + b"X" + b"\x21\x11\x00\x0c", "bad-signature"),
        (_header(0x11, 0x11, b"\x00" * 12), "bad-version"),
        (_header(0x31, 0x11, b"\x00" * 12), "bad-version"),
        (_header(0x22, 0x11, b"\x00" * 12), "bad-command"),
        (_header(0x2F, 0x11, b"\x00" * 12), "bad-command"),
        (_header(0x21, 0x12, b"\x00" * 12), "bad-family"),  # UDP over IPv4
        (_header(0x21, 0x31, b"\x00" * 216), "bad-family"),  # a UNIX socket
        (_header(0x21, 0x00, b""), "bad-family"),  # PROXY with UNSPEC
        (_header(0x21, 0x11, b"\x00" * 11), "too-short"),
        (_header(0x21, 0x21, b"\x00" * 35), "too-short"),
        (_header(0x21, 0x11, b"", length=MAX_PAYLOAD + 1), "too-long"),
        (_header(0x21, 0x11, b"", length=0xFFFF), "too-long"),
        (_header(0x21, 0x11, b"\x00" * 12, length=20), "truncated"),  # announces more than it has
        (_header(0x21, 0x11, b"\x00" * 12)[:15], "truncated"),
        (b"", "truncated"),
        (_header(0x21, 0x11, b"\x00" * 12 + b"\x05\x00"), "bad-tlv"),  # a TLV head cut short
        (_header(0x21, 0x11, b"\x00" * 12 + _tlv(0x05, b"abc")[:-1]), "bad-tlv"),  # runs past the end
        (_header(0x21, 0x11, b"\x00" * 12 + b"\x05\xff\xff" + b"x" * 8), "bad-tlv"),
    ],
)
def test_hostile_or_broken_headers_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderRefused) as refused:
        parse(data)
    assert refused.value.reason == reason


def test_reading_a_header_takes_exactly_its_bytes_and_leaves_the_clients_own() -> None:
    """The bytes after the header are the client's TLS handshake: they must still be in the socket."""
    tls_hello = b"\x16\x03\x01\x00\x05hello"
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        tlvs = _tlv(0x04, b"\x00" * 3)
        theirs.sendall(_header(0x21, 0x11, encode(CLIENT, SERVER)[16:] + tlvs) + tls_hello)
        header = asyncio.run(read_header(ours))
        assert header.source == CLIENT
        assert ours.recv(1024) == tls_hello


def test_a_connection_ending_inside_the_header_is_refused() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        theirs.sendall(encode(CLIENT, SERVER)[:20])
        theirs.shutdown(socket.SHUT_WR)
        with pytest.raises(ProxyHeaderRefused) as refused:
            asyncio.run(read_header(ours))
        assert refused.value.reason == "truncated"


def test_a_header_announcing_too_much_is_refused_before_its_payload_is_read() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        theirs.sendall(_header(0x21, 0x11, b"", length=0xFFFF))  # and never the 65,535 bytes
        with pytest.raises(ProxyHeaderRefused) as refused:
            asyncio.run(asyncio.wait_for(read_header(ours), 5))
        assert refused.value.reason == "too-long"
