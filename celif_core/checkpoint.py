"""Checkpoints: one safetensors file, tensors + JSON metadata, written atomically.

Tensors: ``model.<name>`` (weights), ``optim.<param index>.<key>`` (optimizer state tensors),
``rng.torch`` / ``rng.cuda.<i>`` (generator states as uint8 tensors). The safetensors header's
metadata holds one key, ``celif``: a JSON object with the spec (defaults filled in), step,
metrics, best value, optimizer param groups and scalar state, library and format versions.

Writes go to a temp file in the same directory, are fsynced, then ``os.replace``d over the final
name, so a reader never sees a half-written file. Loading reads tensors and JSON only: nothing is
ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import celif_core
from celif_core.spec import NO_LIMITS, JobSpec, validate_spec

FORMAT_VERSION = 1
METADATA_KEY = "celif"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    metrics: dict[str, float]
    size: int
    sha256: str
    is_best: bool = False


@dataclass
class CheckpointData:
    """Everything a checkpoint file holds, decoded."""

    metadata: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    rng: dict[str, torch.Tensor] = field(default_factory=dict)


def _optimizer_split(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt_state["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().clone().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalar_state": scalars}


def encode(
    *,
    spec: JobSpec,
    model_state: dict[str, torch.Tensor],
    step: int,
    metrics: dict[str, float] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    rng: dict[str, torch.Tensor] | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """Serialize a checkpoint to safetensors bytes."""
    tensors = {f"model.{k}": v.detach().cpu().clone().contiguous() for k, v in model_state.items()}
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "library": "celif",
        "library_version": celif_core.__version__,
        "torch_version": torch.__version__,
        "spec": spec.model_dump(mode="json"),
        "step": int(step),
        "metrics": dict(metrics or {}),
        **(extra or {}),
    }
    if optimizer_state is not None:
        opt_tensors, opt_meta = _optimizer_split(optimizer_state)
        tensors.update(opt_tensors)
        meta["optimizer"] = opt_meta
    for name, value in (rng or {}).items():
        tensors[f"rng.{name}"] = value.detach().cpu().clone().contiguous()
    # one metadata key only: safetensors orders the header map by hash, and a single key keeps
    # the file bytes (and sha256) identical for identical runs
    return st_save(tensors, metadata={METADATA_KEY: json.dumps(meta)})


def write_atomic(path: str | os.PathLike, payload: bytes) -> tuple[int, str]:
    """Write ``payload`` to ``path`` atomically; returns (size, sha256 hex)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return len(payload), hashlib.sha256(payload).hexdigest()


def save_checkpoint(path: str | os.PathLike, **kwargs: Any) -> tuple[int, str]:
    """``encode(**kwargs)`` and write it atomically; returns (size, sha256)."""
    return write_atomic(path, encode(**kwargs))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (reads only the header)."""
    with safe_open(str(path), framework="pt") as fh:
        raw = (fh.metadata() or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path} is not a celif checkpoint (no {METADATA_KEY!r} metadata)")
    meta = json.loads(raw)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format {meta.get('format_version')} is not supported "
            f"(this library reads format {FORMAT_VERSION})"
        )
    return meta


def read_checkpoint(path: str | os.PathLike) -> CheckpointData:
    """Decode a checkpoint file (tensors + JSON, no pickle)."""
    path = Path(path)
    meta = read_metadata(path)
    tensors = st_load(path.read_bytes())
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    optimizer = None
    if "optimizer" in meta:
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        for idx, scalars in meta["optimizer"]["scalar_state"].items():
            state.setdefault(int(idx), {}).update(scalars)
        optimizer = {"state": state, "param_groups": meta["optimizer"]["param_groups"]}
    return CheckpointData(meta, model, optimizer, rng)


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, backend: str = "auto"
) -> tuple[torch.nn.Module, JobSpec, dict[str, Any]]:
    """Rebuild a model from a checkpoint's own metadata; returns (model in eval mode, spec,
    metadata). ``backend="auto"`` runs the spec's own ``training.backend``."""
    from celif_core.models import build_model

    data = read_checkpoint(path)
    spec = validate_spec(data.metadata["spec"], limits=NO_LIMITS)
    model = build_model(
        spec.network, backend=spec.training.backend if backend == "auto" else backend
    )
    model.load_state_dict(data.model)
    model.to(device)
    model.eval()
    return model, spec, data.metadata
