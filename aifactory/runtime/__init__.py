"""The AI runtime that runs on the cluster's nodes: training and serving.

Modules and what they need:

    handoff       event loop <-> worker threads, one wakeup per burst        (no torch)
    http          the server's HTTP/1.1: llhttp framing, limits, timeouts, caps (no torch)
    limits        denial rate limits, recorded names, JSON depth              (no torch)
    job           the training job file (JOB.yaml) and the plan paths         (no torch)
    allocation    inside a Slurm allocation: the job file for its nodes       (no torch)
    dataset       the generated dataset format (aifactory.dataset/v1)         (numpy, safetensors)
    metrics       per-step JSON lines, Prometheus text files, server metrics  (no torch)
    train_cli     `aifactory-train`: checks policy, then starts torchrun      (no torch in the launcher)
    train_worker  what torchrun runs on each process: DDP training            (torch)
    model, checkpoint, server, serve_cli                                      (torch)

Identity, authorisation and the decision log are the site's trust (`aifactory.trust`): the runtime
uses its verifying side and never its issuing side.

Torch is a runtime dependency only (the `[runtime]` extra): nothing outside this package imports it,
and the torch-free modules above never import it either, so `aifactory token ...` and
`aifactory validate` work on a machine without torch.
"""

from __future__ import annotations

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
