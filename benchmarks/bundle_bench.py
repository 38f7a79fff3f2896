"""Bundle build and verify throughput, against `sha256sum` on all cores over the same files.

    .venv/bin/python benchmarks/bundle_bench.py [--size-gb 2.2] [--workdir /tmp] [--rounds 2] [--keep]

Writes random payload files (the size of a real bundle: a few large wheels and model files and many
small ones) under a fresh folder in --workdir, seals them into a signed bundle with the code that
`aifactory bundle build` uses (hash on every core, manifest, signature, normalized tar), then times:

- verify: `verify_bundle` on the archive (header scan, signature, every SHA-256, all cores);
- baseline: `sha256sum` over the same payload files, one process per core in parallel
  (`xargs -P <cores>`, largest files first), the best a stock tool does on this machine.

Each is run --rounds times alternately and the best round is kept (the files are in the page
cache for both). Prints MB/s of each and the ratio verify/baseline (target: at least 0.9).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aifactory import signing
from aifactory.bundle import verify_bundle
from aifactory.bundle.hashing import default_workers
from aifactory.bundle.manifest import BundleVersion
from aifactory.bundle.pack import Header, PayloadFile, Sealed, seal

STAMP = 1_763_800_000
MIB = 1024**2


def payload_sizes(total: int) -> list[int]:
    """Sizes shaped like a bundle: 60% in a few large files, the rest in medium and small ones."""
    sizes: list[int] = []
    large, medium = int(total * 0.6), int(total * 0.3)
    sizes += [large // 4] * 4
    sizes += [medium // 60] * 60
    small = total - sum(sizes)
    sizes += [small // 400] * 400
    return [s for s in sizes if s > 0]


def write_payload(folder: Path, total: int) -> dict[str, PayloadFile]:
    payload: dict[str, PayloadFile] = {}
    block = os.urandom(8 * MIB)
    for index, size in enumerate(payload_sizes(total)):
        path = folder / f"file-{index:04d}.bin"
        with path.open("wb") as handle:
            written = 0
            while written < size:
                # vary each block so no two files share content
                chunk = index.to_bytes(4, "big") + block[: min(len(block), size - written) - 4]
                handle.write(chunk)
                written += len(chunk)
        payload[f"files/{path.name}"] = PayloadFile(path, "extra")
    return payload


def time_sha256sum(files: list[Path], workers: int) -> float:
    ordered = sorted(files, key=lambda p: p.stat().st_size, reverse=True)
    started = time.perf_counter()
    subprocess.run(
        ["xargs", "-0", "-P", str(workers), "-n", "1", "sha256sum"],
        input=b"\0".join(str(p).encode() for p in ordered),
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - started


def seal_payload(
    folder: Path, payload: dict[str, PayloadFile], keys: signing.KeyFiles
) -> tuple[Sealed, float]:
    header = Header(
        site="bench",
        version=BundleVersion.from_timestamp(STAMP),
        created="2025-11-22T08:26:40Z",
        timestamp=STAMP,
        plan_digest="sha256:" + "0" * 64,
        spec_digest="sha256:" + "0" * 64,
        aifactory_version="bench",
        contents={},
    )
    started = time.perf_counter()
    sealed = seal(
        payload,
        header,
        key=signing.load_private_key(keys.private),
        output=folder / "bench.tar",
        work=folder / "meta",
    )
    return sealed, time.perf_counter() - started


def rounds(label: str, times: list[float], megabytes: float) -> str:
    listed = ", ".join(f"{t:.2f}" for t in times)
    return f"{label}: best {min(times):.2f} s, {megabytes / min(times):.0f} MB/s (rounds: {listed})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.2, help="payload size in GB (default 2.2)")
    parser.add_argument("--workdir", default="/tmp", help="where to write the random files (default /tmp)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds of each (best is kept)")
    parser.add_argument("--keep", action="store_true", help="keep the files afterwards")
    args = parser.parse_args(argv)
    if shutil.which("sha256sum") is None or shutil.which("xargs") is None:
        print("needs sha256sum and xargs (coreutils, findutils)", file=sys.stderr)
        return 3
    workers = default_workers()
    total = int(args.size_gb * 1e9)
    folder = Path(tempfile.mkdtemp(prefix="aifactory-bundle-bench-", dir=args.workdir))
    try:
        keys = signing.generate_keypair(
            folder / "key", identity="bench@aifactory", namespaces="aifactory-bundle"
        )
        started = time.perf_counter()
        (folder / "payload").mkdir()
        payload = write_payload(folder / "payload", total)
        seconds = time.perf_counter() - started
        print(f"wrote {len(payload)} random files, {total / 1e9:.2f} GB, in {seconds:.1f} s")
        sealed, build_seconds = seal_payload(folder, payload, keys)
        verify_times, baseline_times = [], []
        files = [item.source for item in payload.values()]
        for _round in range(args.rounds):
            baseline_times.append(time_sha256sum(files, workers))
            started = time.perf_counter()
            report = verify_bundle(folder / "bench.tar", trust=keys.allowed_signers, check_rollback=False)
            verify_times.append(time.perf_counter() - started)
            assert report.ok and report.payload_bytes == sealed.payload_bytes
        payload_mb = sealed.payload_bytes / 1e6
        archive_mb = sealed.archive_bytes / 1e6
        print(
            f"cores: {workers}; payload {payload_mb:.0f} MB in {len(payload)} files; "
            f"archive {archive_mb:.0f} MB"
        )
        build_rate = archive_mb / build_seconds
        print(f"build (hash + sign + write tar): {build_seconds:.2f} s, {build_rate:.0f} MB/s")
        print(rounds(f"verify (aifactory, {workers} threads)", verify_times, payload_mb))
        print(rounds(f"sha256sum x{workers} in parallel", baseline_times, payload_mb))
        ratio = min(baseline_times) / min(verify_times)
        verdict = "OK" if ratio >= 0.9 else "BELOW TARGET"
        print(f"ratio verify / sha256sum throughput: {ratio:.2f}x (target >= 0.90x) {verdict}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
