"""The dataset format the runtime trains on: `aifactory.dataset/v1`, and a deterministic generator.

A dataset is a folder at the dataset's planned path:

    manifest.json            {"format": "aifactory.dataset/v1", "name", "features", "classes",
                              "samples", "seed", "generator", "shards": [{"file", "samples", "sha256"}],
                              and "offset" for a draw that does not start at the seed's first sample}
    shard-00000.safetensors  tensors `x` float32 [n, features] and `y` int64 [n] (labels 0..classes-1)
    ...

Readers check every shard's SHA-256 against the manifest before using it. The generator makes a
synthetic classification task ("vitals"): Gaussian features labelled by a fixed random two-layer
teacher network, so a small MLP can learn it and the loss falls. Same seed and sizes -> same bytes.
The folder is written beside its final place and renamed in, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from aifactory.digests import sha256_file
from aifactory.durable import fsync_path
from aifactory.errors import DatasetError, Location

FORMAT = "aifactory.dataset/v1"
GENERATOR = "aifactory.teacher-mlp/v1"
SHARD_SAMPLES = 8192
MANIFEST = "manifest.json"
KEPT_BESIDE = ("versions", "feedback")  # aifactory.data's folders inside a dataset's folder


@dataclass(frozen=True)
class Dataset:
    name: str
    features: int
    classes: int
    x: np.ndarray
    y: np.ndarray
    # What was read (path below the dataset's folder, SHA-256, size): the training manifest's input.
    files_read: tuple[tuple[str, str, int], ...] = ()

    def __len__(self) -> int:
        return int(self.y.shape[0])


def generate(
    directory: Path,
    *,
    name: str,
    samples: int = 4096,
    features: int = 16,
    classes: int = 4,
    seed: int = 7,
    offset: int = 0,
    extend: bool = False,
) -> dict[str, Any]:
    """Write a dataset at `directory`; return its manifest. It holds samples `offset` to `offset +
    samples` of the seed's draw: the same teacher labels every offset, so a draw past the samples
    another dataset holds is a held-out set of the same task. `directory` must not exist yet, unless
    `extend` and it holds a smaller draw of this generator from the same seed and offset: the larger
    draw then replaces it (its first samples are the old ones; versions and feedback are kept)."""
    if directory.exists() and not (extend and _extends(directory, samples=samples, seed=seed, offset=offset)):
        raise DatasetError(
            f"{directory} exists; refusing to overwrite a dataset", location=Location(file=str(directory))
        )
    x, y = teacher_samples(samples=offset + samples, features=features, classes=classes, seed=seed)
    return write(directory, name=name, x=x[offset:], y=y[offset:], classes=classes, seed=seed, offset=offset)


def _extends(directory: Path, *, samples: int, seed: int, offset: int) -> bool:
    """Whether `directory` holds a draw of this generator, seed and offset with fewer samples."""
    manifest = read_manifest(directory)
    same_draw = (manifest.get("generator"), manifest.get("seed"), manifest.get("offset", 0)) == (
        GENERATOR,
        seed,
        offset,
    )
    return same_draw and int(manifest.get("samples", 0)) < samples


def teacher_samples(*, samples: int, features: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`samples` inputs and the labels the seed's teacher network gives them: the first n samples of
    a seed are the same whatever `samples` is, so a larger draw extends a smaller one."""
    rng = np.random.Generator(np.random.PCG64(seed))
    hidden = 4 * features
    w1 = rng.standard_normal((features, hidden)) / np.sqrt(features)
    w2 = rng.standard_normal((hidden, classes)) / np.sqrt(hidden)
    x = rng.standard_normal((samples, features)).astype(np.float32)
    y = np.argmax(np.tanh(x.astype(np.float64) @ w1) @ w2, axis=1).astype(np.int64)
    return x, y


def write(
    directory: Path, *, name: str, x: np.ndarray, y: np.ndarray, classes: int, seed: int, offset: int = 0
) -> dict[str, Any]:
    """Write samples as a dataset at `directory`, replacing what is there only by a rename (a reader
    sees the old dataset or the new one); return its manifest. Files beside the dataset's own (its
    versions/ and feedback/ folders, aifactory.data) are carried over into the new folder."""
    samples, features = int(x.shape[0]), int(x.shape[1])
    staging = directory.with_name(f".{directory.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o750)
    shards = []
    for index, start in enumerate(range(0, samples, SHARD_SAMPLES)):
        file = f"shard-{index:05d}.safetensors"
        save_file(
            {
                "x": np.ascontiguousarray(x[start : start + SHARD_SAMPLES]),
                "y": np.ascontiguousarray(y[start : start + SHARD_SAMPLES]),
            },
            str(staging / file),
        )
        shards.append(
            {
                "file": file,
                "samples": int(min(SHARD_SAMPLES, samples - start)),
                "sha256": sha256_file(staging / file),
            }
        )
    manifest = {
        "format": FORMAT,
        "name": name,
        "features": features,
        "classes": classes,
        "samples": samples,
        "seed": seed,
        "generator": GENERATOR,
        "shards": shards,
    }
    if offset:  # only where it is not 0, so the draws written before it existed keep their bytes
        manifest["offset"] = offset
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for entry in staging.iterdir():
        with entry.open("rb") as handle:
            os.fsync(handle.fileno())
    fsync_path(staging)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if directory.exists():
        for kept in KEPT_BESIDE:
            if (directory / kept).exists():
                os.rename(directory / kept, staging / kept)
        retired = directory.with_name(f".{directory.name}.retired-{os.getpid()}")
        os.rename(directory, retired)
        os.rename(staging, directory)
        shutil.rmtree(retired)
    else:
        os.rename(staging, directory)
    fsync_path(directory.parent)
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    return read_manifest_file(directory / MANIFEST)


def read_manifest_file(path: Path) -> dict[str, Any]:
    directory = path.parent
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(
            f"no dataset at {directory} (no manifest.json)",
            location=Location(file=str(path)),
            hint="generate one with `aifactory-train JOB.yaml --generate-dataset`",
        ) from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}", location=Location(file=str(path))) from None
    if manifest.get("format") != FORMAT:
        raise DatasetError(
            f"{path} is not in format {FORMAT}", location=Location(file=str(path), path="format")
        )
    return dict(manifest)


def load(directory: Path) -> Dataset:
    """Read and check every shard (SHA-256 against the manifest)."""
    return load_files(directory / MANIFEST, lambda shard: directory / shard)


def load_files(manifest_path: Path, shard_path: Callable[[str], Path]) -> Dataset:
    """A dataset from its manifest file and its shards wherever they are stored (a dataset version's
    objects, aifactory.data.versions): every shard checked against its SHA-256 in the manifest."""
    directory = manifest_path.parent
    manifest = read_manifest_file(manifest_path)
    xs, ys = [], []
    read = [(MANIFEST, sha256_file(manifest_path), manifest_path.stat().st_size)]
    for shard in manifest["shards"]:
        if Path(shard["file"]).name != shard["file"]:
            raise DatasetError(
                f"shard name {shard['file']!r} leaves the dataset folder",
                location=Location(file=str(manifest_path)),
            )
        path = shard_path(shard["file"])
        if sha256_file(path) != shard["sha256"]:
            raise DatasetError(
                f"shard {path} does not match its SHA-256 in the manifest",
                location=Location(file=str(path)),
                hint="the dataset was altered or is incomplete",
            )
        tensors = load_file(str(path))
        xs.append(tensors["x"])
        ys.append(tensors["y"])
        read.append((str(shard["file"]), str(shard["sha256"]), path.stat().st_size))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if x.shape != (manifest["samples"], manifest["features"]) or y.shape != (manifest["samples"],):
        raise DatasetError(f"the shards in {directory} do not add up to the manifest's shape")
    return Dataset(
        str(manifest["name"]), int(manifest["features"]), int(manifest["classes"]), x, y, tuple(read)
    )
