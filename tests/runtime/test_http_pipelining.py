"""The server's request parser (aifactory.runtime.http._Parse over the real httptools/llhttp) bounds
what it holds of an incomplete head between reads, and counts only the head's own bytes: a read that
ends complete pipelined requests before a new head begins does not count theirs against it.

Found by tests/runtime/test_http_hardening.py under load (2026-12-03): 200 pipelined requests with
2,000-byte targets came in 64 KB reads, and a head that began near a read's end was refused 431."""

from __future__ import annotations

from aifactory.runtime.http import HttpLimits, _Parse

LIMITS = HttpLimits()


def _request(target: str) -> bytes:
    return f"POST {target} HTTP/1.1\r\nHost: node\r\nContent-Length: 2\r\n\r\n{{}}".encode()


def test_pipelined_requests_in_one_read_are_not_counted_against_the_next_head() -> None:
    whole = _request("/v1/models/" + "n" * 2000 + "/infer")
    earlier = whole * 20  # far over max_header_bytes in one read, each request well under it
    assert len(earlier) > LIMITS.max_header_bytes
    parse = _Parse(LIMITS)
    assert parse.feed(earlier + whole[:100])  # ... and the next request's head begun
    assert parse.refusal is None and len(parse.ready) == 20
    assert parse.feed(whole[100:])
    assert parse.refusal is None and len(parse.ready) == 21


def test_a_head_that_grows_past_the_limit_across_reads_is_refused_431() -> None:
    parse = _Parse(LIMITS)
    assert parse.feed(b"GET / HTTP/1.1\r\nX-Long: ")
    value, held = b"v" * 4096, 0
    while parse.feed(value):
        held += len(value)
        assert held <= LIMITS.max_header_bytes, "an incomplete header past the limit was held"
    assert held + len(value) > LIMITS.max_header_bytes - len(value)  # refused near the limit, not early
    assert parse.refusal is not None and parse.refusal.status == 431


def test_a_head_that_begins_in_a_read_after_pipelined_requests_is_still_bounded() -> None:
    parse = _Parse(LIMITS)
    whole = _request("/ok")
    assert parse.feed(whole * 3 + b"GET / HTTP/1.1\r\nX-Long: " + b"v" * 1000)
    value = b"v" * 4096
    refused = False
    for _ in range(LIMITS.max_header_bytes // len(value) + 2):
        if not parse.feed(value):
            refused = True
            break
    assert refused and parse.refusal is not None and parse.refusal.status == 431
