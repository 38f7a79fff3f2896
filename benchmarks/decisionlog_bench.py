"""What RFC 8785 canonical records cost on the decision log's write path, against baselines measured in
the same run.

    .venv/bin/python benchmarks/decisionlog_bench.py [--records 20000 --rounds 5]

1. CPU per record of building a chained record (hash over the canonical body, then the canonical line):
   the legacy form (Python's sorted compact json.dumps, what the log wrote before `canon`), against
   RFC 8785 through aifactory.chain (its fast path for plain records), and against the rfc8785 package
   alone (what the fast path saves). A server decision record, the shape authz writes.
2. Durable appends through ChainWriter (group commits of 32 records, one fsync each), with and without
   rotation (a 1 MiB segment size, so that rotation happens during the run), records per second.

Rounds alternate the sides so that load from other work on a shared machine falls on both alike; the
ratios are printed with the spread of the per-round ratios. Exit status 0: it measures.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rfc8785

from aifactory.chain import CANON, ChainWriter, _jcs, _plain, canonical_json

RECORD: dict[str, Any] = {
    "seq": 123456,
    "prev": "a" * 64,
    "time": "2026-12-01T21:28:41.501Z",
    "component": "serve",
    "host": "lab-cpu-001",
    "decision_id": "9f1b2c3d4e5f60718293a4b5c6d7e8f9",
    "tenant": "health",
    "token_id": "7063e8994d29f349",
    "action": "infer",
    "resource": "model/vitals-mlp",
    "allow": True,
    "reasons": [],
    "controls": ["AC-3", "AC-3(3)"],
    "identity": "token",
    "certificate": None,
    "request": {"id": "8fe41d27-6008", "peer": "127.0.0.1"},
}


def legacy(record: dict[str, Any]) -> bytes:
    digest = hashlib.sha256(canonical_json(record).encode()).hexdigest()
    return canonical_json({**record, "hash": digest}).encode()


def rfc8785_fast_path(record: dict[str, Any]) -> bytes:
    body = {**record, "canon": CANON}
    plain = _plain(body)
    digest = hashlib.sha256(_jcs(body, plain)).hexdigest()
    return _jcs({**body, "hash": digest}, plain)


def rfc8785_package(record: dict[str, Any]) -> bytes:
    body = {**record, "canon": CANON}
    digest = hashlib.sha256(rfc8785.dumps(body)).hexdigest()
    return bytes(rfc8785.dumps({**body, "hash": digest}))


def per_record_us(build: Callable[[dict[str, Any]], bytes], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        build(RECORD)
    return (time.process_time() - started) / count * 1e6


def appends_per_second(folder: Path, *, rotate: bool, count: int) -> float:
    path = folder / ("rotating.jsonl" if rotate else "plain.jsonl")
    payload = {k: v for k, v in RECORD.items() if k not in ("seq", "prev")}
    with ChainWriter(path, rotate_bytes=(1 << 20) if rotate else None, lock_file=True) as writer:
        started = time.perf_counter()
        for _ in range(count // 32):
            writer.append_many([payload] * 32)
        return (count // 32) * 32 / (time.perf_counter() - started)


def _ratios(label: str, rounds: list[tuple[float, float]], unit: str) -> None:
    base = statistics.mean(b for b, _ in rounds)
    new = statistics.mean(n for _, n in rounds)
    each = [n / b for b, n in rounds]
    spread = f"rounds {min(each):.2f}-{max(each):.2f}x"
    print(f"  {label}: {base:.1f} -> {new:.1f} {unit}; ratio {new / base:.2f}x ({spread})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    assert legacy(RECORD) != rfc8785_fast_path(RECORD)
    assert rfc8785_fast_path(RECORD) == rfc8785_package(RECORD)

    fast: list[tuple[float, float]] = []
    package: list[tuple[float, float]] = []
    for _ in range(args.rounds):
        base = per_record_us(legacy, args.records)
        fast.append((base, per_record_us(rfc8785_fast_path, args.records)))
        package.append((base, per_record_us(rfc8785_package, args.records)))
    print("CPU per chained record (hash + line), microseconds:")
    _ratios("legacy json.dumps -> RFC 8785 (aifactory.chain)", fast, "us")
    _ratios("legacy json.dumps -> RFC 8785 (rfc8785 package alone)", package, "us")

    rotation: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.rounds):
            folder = Path(tmp) / str(index)
            folder.mkdir()
            count = max(32, args.records // 4)
            if index % 2:  # alternate which side goes first: the disk's state falls on both alike
                rotated = appends_per_second(folder, rotate=True, count=count)
                plain = appends_per_second(folder, rotate=False, count=count)
            else:
                plain = appends_per_second(folder, rotate=False, count=count)
                rotated = appends_per_second(folder, rotate=True, count=count)
            rotation.append((plain, rotated))
    print("Durable appends (group commits of 32, one fsync each), records/s:")
    _ratios("no rotation -> rotation at 1 MiB", rotation, "records/s")


if __name__ == "__main__":
    main()
