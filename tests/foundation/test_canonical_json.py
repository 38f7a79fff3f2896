"""Canonical JSON is RFC 8785 (the JSON Canonicalization Scheme): the RFC's own examples, and the fast
path for plain records (aifactory.chain._plain) writing exactly what the rfc8785 package writes."""

from __future__ import annotations

import itertools
import json
import struct
from typing import Any

import pytest
import rfc8785

from aifactory.chain import canonical_bytes, parse_line
from aifactory.errors import ChainError, LogLineError

# RFC 8785 section 3.2.2: the input, as its JSON text, and the canonical output.
RFC_INPUT = r"""{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"""
RFC_OUTPUT = (
    '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
    '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
)

# RFC 8785 section 3.2.3: property sorting by UTF-16 code units.
RFC_SORT_INPUT = r"""{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"""
RFC_SORT_ORDER = ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]

# RFC 8785 appendix B: IEEE 754 doubles (as hex) and their canonical number forms.
RFC_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def test_rfc_example() -> None:
    assert canonical_bytes(json.loads(RFC_INPUT)) == RFC_OUTPUT.encode()


def test_rfc_sorting_example() -> None:
    written = canonical_bytes(json.loads(RFC_SORT_INPUT))
    assert list(json.loads(written)) == RFC_SORT_ORDER


@pytest.mark.parametrize(("bits", "expected"), RFC_NUMBERS)
def test_rfc_numbers(bits: str, expected: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(bits))
    assert canonical_bytes([value]) == f"[{expected}]".encode()


STRINGS = [
    "",
    "plain",
    "".join(chr(c) for c in range(0x20)),
    '\x7f "quoted" \\ back/slash',
    "\u2028\u2029 line separators",
    "santé €",
    "\U0001f600 \ufb01 \ud7ff",
]
KEYS = ["a", "B", "_", "\u00e9", "\u0080", "\r", "ключ", "\ud7ffz"]
SCALARS: list[Any] = [None, True, False, 0, -1, 2**53 - 1, -(2**53 - 1), *STRINGS]


def _values() -> list[Any]:
    nested = [
        {k: v for k, v in zip(KEYS, itertools.islice(itertools.cycle(SCALARS), i, None), strict=False)}
        for i in range(len(SCALARS))
    ]
    return [*SCALARS, list(SCALARS), *nested, {"list": nested, "inner": {"x": nested[:2], "y": []}}]


@pytest.mark.parametrize("index", range(len(_values())))
def test_plain_values_are_written_as_rfc8785_writes_them(index: int) -> None:
    value = _values()[index]
    assert canonical_bytes(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value",
    [{"f": 1.0}, {"\ufb33": 1, "\U0001f600": 2}, {"big": 2**60 + 1}, [0.1, 1e21, -0.0]],
    ids=["float", "astral-keys", "big-int", "floats"],
)
def test_values_off_the_fast_path(value: Any) -> None:
    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        with pytest.raises(ChainError):
            canonical_bytes(value)
        return
    assert canonical_bytes(value) == expected


def test_legacy_form_is_kept_for_old_records() -> None:
    value = {"b": 1.0, "a": "é"}
    assert canonical_bytes(value, None) == '{"a":"é","b":1.0}'.encode()
    assert canonical_bytes(value) == '{"a":"é","b":1}'.encode()
    with pytest.raises(ChainError, match="unknown canonical form"):
        canonical_bytes(value, "c14n")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"a":1,"a":2}', "duplicate key 'a'"),
        (b'{"a":"\xff"}', "not UTF-8 (byte 0xff at column 7)"),
        (b'{"a":NaN}', "NaN is not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"a":', "not JSON"),
    ],
)
def test_strict_lines(raw: bytes, why: str) -> None:
    with pytest.raises(LogLineError, match="^" + why.replace("(", r"\(").replace(")", r"\)")):
        parse_line(raw)
