"""The pool's collective path: an all-reduce across every host of the pool through torch.distributed
(Gloo on CPU, NCCL on GPU), reported as bus bandwidth with the nccl-tests formula.

Every host of the pool runs this at once (the control host starts them together):

    python -m aifactory.runtime.health.allreduce --rank R --world N --master ADDR --port P

nccl-tests (doc/PERFORMANCE.md): algorithm bandwidth = bytes / time; for all-reduce the bus bandwidth
is algbw * 2 (n - 1) / n, comparable across pool sizes and with the hardware's link speed. Reported in
GB/s (10^9 bytes per second), as nccl-tests does.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import timedelta

from aifactory.console import DEBUG_HELP, UsageParser, run_console
from aifactory.errors import UsageError
from aifactory.runtime.health.model import Measurement

WARMUP = 2


def bus_bandwidth_gbs(size_bytes: int, seconds: float, world: int) -> float:
    """nccl-tests' all-reduce bus bandwidth, GB/s."""
    algbw = size_bytes / seconds / 1e9
    return algbw * 2 * (world - 1) / world


def measure(
    *, rank: int, world: int, master: str, port: int, size_bytes: int, iterations: int, timeout_s: float
) -> Measurement:
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
    dist.init_process_group(
        backend,
        init_method=f"tcp://{master}:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )
    try:
        tensor = torch.ones(size_bytes // 4, dtype=torch.float32, device=device)
        for _ in range(WARMUP):
            dist.all_reduce(tensor)
        if backend == "nccl":
            torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iterations):
            dist.all_reduce(tensor)
        if backend == "nccl":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / iterations
        busbw = bus_bandwidth_gbs(size_bytes, seconds, world)
        raw = f"{backend} all_reduce of {size_bytes} bytes over {world} ranks: {seconds * 1e3:.3f} ms per op"
        return Measurement("allreduce-busbw", "pool", round(busbw, 4), "GB/s", raw)
    finally:
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    return run_console(_run, argv, log_format=None)


def _run(arguments: list[str]) -> int:
    parser = UsageParser(
        prog="python -m aifactory.runtime.health.allreduce",
        description="One rank of the pool's all-reduce; prints its bus bandwidth as a JSON measurement.",
    )
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--master", required=True, help="rank 0's compute address")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bytes", type=int, default=16 * 2**20)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(arguments)
    if args.world < 2 or not 0 <= args.rank < args.world:
        raise UsageError(
            f"--world {args.world} --rank {args.rank}: an all-reduce needs 2 or more ranks, rank below world"
        )
    if args.bytes < 4 or args.iterations < 1:
        raise UsageError("--bytes must be at least 4 and --iterations at least 1")
    try:
        found = measure(
            rank=args.rank,
            world=args.world,
            master=args.master,
            port=args.port,
            size_bytes=args.bytes,
            iterations=args.iterations,
            timeout_s=args.timeout,
        )
    except (RuntimeError, OSError, ValueError) as exc:  # torch raises RuntimeError (DistBackendError...)
        found = Measurement.failed("allreduce-busbw", "pool", "GB/s", f"all-reduce failed: {exc}")
    print(json.dumps(found.as_dict(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
