"""Host-to-device copy bandwidth and a matrix-multiply rate through torch, for scripts/gpu-health.sh
(on a GPU: pinned 1 GiB copies and bf16 8192x8192 matmuls; with --dry-run, the same steps on the
CPU with small sizes, to prove the script's path where no GPU is).

    python -c 'from aifactory.runtime.health.gpu_bench import report; report(dry_run=False)'
"""

from __future__ import annotations

import json
import time
from typing import Any


def measure(*, dry_run: bool) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available() and not dry_run
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    copy_bytes = 2**30 if cuda else 16 * 2**20
    side = 8192 if cuda else 256
    host = torch.empty(copy_bytes, dtype=torch.uint8, pin_memory=cuda)
    target = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
    _sync(cuda)
    start = time.perf_counter()
    for _ in range(5):
        target.copy_(host, non_blocking=cuda)
    _sync(cuda)
    h2d = 5 * copy_bytes / (time.perf_counter() - start) / 1e9
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    a @ b  # warm-up
    _sync(cuda)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(cuda)
    tflops = 10 * 2 * side**3 / (time.perf_counter() - start) / 1e12
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpu-h2d-bandwidth": {"value": round(h2d, 3), "unit": "GB/s", "bytes": copy_bytes},
        "gpu-matmul-rate": {"value": round(tflops, 4), "unit": "TFLOP/s", "side": side, "dtype": str(dtype)},
        "dry_run": dry_run,
    }


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def report(*, dry_run: bool) -> None:
    """The measurement as one JSON line on standard output (what the script saves)."""
    print(json.dumps(measure(dry_run=dry_run), sort_keys=True))
