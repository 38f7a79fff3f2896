"""Node-side health checks: what `aifactory health` runs on every host (docs/health.md).

model      the task a host gets and the measurements it answers with      (no torch)
probes     services, clock, disk, memory, storage (fio), fabric, iperf3   (no torch)
gpu        nvidia-smi, Xid and dcgmi parsers and the GPU probe            (no torch)
node       one host's run: task on stdin, report on stdout                (no torch)
allreduce  the pool's all-reduce bus bandwidth (standard level)           (torch)
"""
