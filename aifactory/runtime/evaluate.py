"""The loop's evaluation job: the champion and the challenger measured on one evaluation set version.

    python -m aifactory.runtime.evaluate --model M --model-dir D --challenger sha256:... \
        [--champion sha256:...] --dataset H --dataset-dir E --version N --trust PUB --out REPORT

Runs on a node (through Slurm, aifactory.loop.jobs) or anywhere torch is. It reads nothing it has not
verified: both model versions against the site's model-signing key (their signatures, as a server
checks them before it loads one), and the evaluation set from its signed, immutable version (the
manifest's signature, its place in the lineage, every file's SHA-256), from the version's stored
objects, not from the dataset's working folder, so both models are measured on the same bytes
whatever was written to the folder since. It writes an `aifactory.evaluation-report/v1`
(aifactory.loop.promotion) with each model's accuracy and log-loss.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as functional

from aifactory.console import DEBUG_HELP, UsageParser, run_console
from aifactory.data.versions import DatasetStore, read_history
from aifactory.durable import atomic_write
from aifactory.errors import DatasetError, DatasetVersionError
from aifactory.runtime import checkpoint
from aifactory.runtime import dataset as datasets
from aifactory.runtime.model import MLP, ModelConfig
from aifactory.trust.models import ModelTrust, Registry, verify_version

REPORT_FORMAT = "aifactory.evaluation-report/v1"  # aifactory.loop.promotion reads it


def evaluation_set(
    dataset_dir: Path, *, dataset: str, version: int, trust: ModelTrust
) -> tuple[datasets.Dataset, str]:
    """The samples of one signed dataset version, read from its objects; and the version's digest."""
    history = read_history(dataset_dir, trust, dataset=dataset)
    if not history.ok:
        raise DatasetVersionError(
            f"the versions of dataset {dataset} do not verify: {history.problems[0]}",
            code="evaluation-set-invalid",
        )
    found = history.find(str(version))
    store = DatasetStore(dataset_dir)
    by_path = {str(f["path"]): store.object(str(f["sha256"])) for f in found.files}
    if datasets.MANIFEST not in by_path:
        raise DatasetError(f"version {version} of dataset {dataset} holds no {datasets.MANIFEST}")

    def shard(name: str) -> Path:
        if name not in by_path:
            raise DatasetError(f"version {version} of dataset {dataset} holds no shard {name}")
        return by_path[name]

    return datasets.load_files(by_path[datasets.MANIFEST], shard), found.digest


def model_metrics(files: Path, data: datasets.Dataset) -> dict[str, float]:
    """accuracy (share of the labels the model's top class gets right) and log-loss (mean cross-entropy
    in nats) of a verified model version's weights on the samples."""
    found = checkpoint.load(files)
    network = MLP(ModelConfig.from_dict(found.meta["network"]))
    network.load_state_dict(found.model_state)
    network.eval()
    with torch.no_grad():
        logits = network(torch.from_numpy(np.ascontiguousarray(data.x)))
        labels = torch.from_numpy(np.ascontiguousarray(data.y))
        accuracy = float((logits.argmax(dim=1) == labels).float().mean())
        log_loss = float(functional.cross_entropy(logits, labels))
    return {"accuracy": round(accuracy, 6), "log-loss": round(log_loss, 6)}


def evaluate(
    *,
    model: str,
    model_dir: Path,
    champion: str | None,
    challenger: str,
    dataset: str,
    dataset_dir: Path,
    version: int,
    trust: ModelTrust,
) -> dict[str, object]:
    """The evaluation report (as its JSON document)."""
    data, digest = evaluation_set(dataset_dir, dataset=dataset, version=version, trust=trust)
    registry = Registry(model_dir)

    def scores(version_digest: str) -> dict[str, object]:
        verified = verify_version(registry, registry.version_dir(version_digest), trust)
        return {"digest": verified.digest, "metrics": model_metrics(verified.files, data)}

    return {
        "format": REPORT_FORMAT,
        "model": model,
        "evaluation_set": {"dataset": dataset, "version": version, "digest": digest},
        "champion": scores(champion) if champion else None,
        "challenger": scores(challenger),
    }


def main(argv: Sequence[str] | None = None) -> int:
    return run_console(_work, argv)


def _work(arguments: list[str]) -> int:
    parser = UsageParser(prog="aifactory.runtime.evaluate")
    parser.add_argument("--model", required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--champion", help="the champion's version digest (none: the model has none)")
    parser.add_argument("--challenger", required=True)
    parser.add_argument("--dataset", required=True, help="the evaluation dataset")
    parser.add_argument("--dataset-dir", type=Path, required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--trust", type=Path, required=True, help="the site's model-signing public key")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args: argparse.Namespace = parser.parse_args(arguments)
    torch.set_num_threads(1)
    report = evaluate(
        model=args.model,
        model_dir=args.model_dir,
        champion=args.champion or None,
        challenger=args.challenger,
        dataset=args.dataset,
        dataset_dir=args.dataset_dir,
        version=args.version,
        trust=ModelTrust(args.trust),
    )
    atomic_write(args.out, (json.dumps(report, sort_keys=True, indent=1) + "\n").encode(), mode=0o644)
    return 0


if __name__ == "__main__":
    sys.exit(main())
