"""Atomic checkpoints: safetensors weights + optimizer state + step, and a `latest` pointer.

    <model dir>/checkpoints/
        step-00000040/model.safetensors       the weights
        step-00000040/optimizer.safetensors   the optimizer's tensors
        step-00000040/checkpoint.json         step, model config, the optimizer's structure, SHA-256s
        latest                                "step-00000040": written last

A checkpoint is written into a hidden staging folder, each file fsync'd, `checkpoint.json` last, the
folder fsync'd and renamed into place, the parent fsync'd, and only then is `latest` replaced (temp
file + fsync + rename). A crash at any moment leaves the previous complete checkpoint and a valid
`latest`. Loading checks every file's SHA-256; if `latest` is missing or damaged, the newest step
folder that checks out is used. No pickle: optimizer state is tensors plus JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from aifactory.digests import sha256_file
from aifactory.durable import atomic_write, fsync_path

FORMAT = "aifactory.checkpoint/v1"
LATEST = "latest"
FAULT_STALL = "AIFACTORY_FAULT_STALL_IN_CHECKPOINT"  # test-only fault injection: a step number


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    meta: dict[str, Any]


def _encode(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """Optimizer state -> JSON with tensor references (keys keep their types)."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(value, dict):
        return {"__map__": [[k, _encode(v, tensors, f"{path}.{k}")] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    return value


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict) and "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if isinstance(value, dict) and "__map__" in value:
        return {k: _decode(v, tensors) for k, v in value["__map__"]}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def save(
    directory: Path,
    *,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 3,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / step_name(step)
    staging = directory / f".{step_name(step)}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(staging / "model.safetensors")
    )
    fsync_path(staging / "model.safetensors")
    _stall_if_asked(step)
    optimizer_tensors: dict[str, torch.Tensor] = {}
    structure = _encode(optimizer_state, optimizer_tensors, "opt")
    save_file(optimizer_tensors, str(staging / "optimizer.safetensors"))
    fsync_path(staging / "optimizer.safetensors")
    document = {
        "format": FORMAT,
        "step": step,
        **meta,
        "optimizer": structure,
        "files": {
            name: sha256_file(staging / name) for name in ("model.safetensors", "optimizer.safetensors")
        },
    }
    (staging / "checkpoint.json").write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    fsync_path(staging / "checkpoint.json")
    fsync_path(staging)
    if final.exists():  # the same step written again after a resume: replace it whole
        shutil.rmtree(final)
    os.rename(staging, final)
    fsync_path(directory)
    atomic_write(directory / LATEST, (final.name + "\n").encode())
    _prune(directory, keep=keep)
    return final


def _stall_if_asked(step: int) -> None:
    if os.environ.get(FAULT_STALL) == str(step):
        time.sleep(3600)  # the test kills the job here, mid-write


def _prune(directory: Path, *, keep: int) -> None:
    steps = sorted(p for p in directory.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for staging in directory.glob(".step-*.staging-*"):
        shutil.rmtree(staging, ignore_errors=True)


def load(path: Path) -> Checkpoint:
    """Load one checkpoint folder; ValueError when it is incomplete or altered."""
    try:
        document = json.loads((path / "checkpoint.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: no readable checkpoint.json ({exc})") from None
    if document.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    for name, digest in document["files"].items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            raise ValueError(f"{path}: {name} is missing or does not match its SHA-256")
    model_state = load_file(str(path / "model.safetensors"))
    optimizer_state = _decode(document["optimizer"], load_file(str(path / "optimizer.safetensors")))
    meta = {k: v for k, v in document.items() if k not in ("optimizer", "files")}
    return Checkpoint(path, int(document["step"]), model_state, optimizer_state, meta)


def latest_complete(directory: Path) -> Checkpoint | None:
    """The checkpoint `latest` names, or else the newest one that checks out; None when there is none."""
    candidates: list[Path] = []
    try:
        named = (directory / LATEST).read_text().strip()
        if named.startswith("step-") and "/" not in named:
            candidates.append(directory / named)
    except OSError:
        pass
    candidates += sorted((p for p in directory.glob("step-*") if p.is_dir()), reverse=True)
    for candidate in candidates:
        try:
            return load(candidate)
        except ValueError:
            continue
    return None


def latest_step(directory: Path) -> int | None:
    """The step `latest` names, without loading tensors (for servers watching for new weights)."""
    try:
        named = (directory / LATEST).read_text().strip()
        return int(named.removeprefix("step-"))
    except (OSError, ValueError):
        return None
