"""Validation of an uploaded NPZ dataset, with numpy only (no torch, never unpickles).

`inspect_npz(path, ...)` returns the dataset's facts or raises `InvalidDataset` whose message is
the reason shown to the user. Array headers are read before any data, so an object (ragged) array
or a member that would decompress to more than the limit is refused without loading it.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

MIN_SEQUENCES = 10
MAX_CLASSES = 10_000
REQUIRED_KEYS = ("x", "y")

DatasetKind = Literal["classification", "regression"]
DatasetTarget = Literal["per_sequence", "per_step"]  # one target per sequence, or per step


class InvalidDataset(ValueError):
    """The upload is not a usable dataset; the message says why."""


@dataclass(frozen=True)
class DatasetFacts:
    num_sequences: int
    seq_len: int
    input_size: int
    output_size: int
    kind: DatasetKind
    target: DatasetTarget


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _read_headers(path: Path, max_array_bytes: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidDataset(
            "not an NPZ file (np.savez / np.savez_compressed writes a zip archive of .npy "
            f"arrays): {exc}"
        ) from None
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        keys = [n[:-4] if n.endswith(".npy") else n for n in names]
        missing = [k for k in REQUIRED_KEYS if k not in keys]
        extra = sorted(k for k in keys if k not in REQUIRED_KEYS)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(repr(k) for k in missing)}")
            if extra:
                parts.append(f"unexpected {', '.join(repr(k) for k in extra)}")
            raise InvalidDataset(
                f"the NPZ must hold exactly the arrays 'x' [N, T, F] and 'y' [N] or [N, T]; "
                f"found {sorted(keys)} ({'; '.join(parts)})"
            )
        for name, key in zip(names, keys, strict=True):
            try:
                with zf.open(name) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise InvalidDataset(f"array {key!r} is not a valid .npy member: {exc}") from None
            if dtype.hasobject:
                raise InvalidDataset(
                    f"array {key!r} is an object array (ragged sequences or non-numeric values); "
                    "pad the sequences to one length T and save numeric arrays"
                )
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if nbytes > max_array_bytes:
                raise InvalidDataset(
                    f"array {key!r} {_shape(shape)} would take {nbytes} bytes in memory, over the "
                    f"limit of {max_array_bytes} bytes"
                )
            headers[key] = (tuple(shape), dtype)
    return headers


def inspect_npz(
    path: Path,
    *,
    kind: Literal["auto", "classification", "regression"] = "auto",
    max_array_bytes: int,
) -> DatasetFacts:
    """Validate the NPZ at `path` and return its facts; raise InvalidDataset with the reason."""
    headers = _read_headers(path, max_array_bytes)
    (x_shape, x_dtype), (y_shape, y_dtype) = headers["x"], headers["y"]
    if x_dtype.kind != "f":
        raise InvalidDataset(f"x must be a float array; got dtype {x_dtype}")
    if len(x_shape) != 3:
        raise InvalidDataset(
            f"x must have shape [N, T, F] (N sequences, T steps, F features; F=1 for one value "
            f"per step); got {_shape(x_shape)}"
        )
    n, t, f = x_shape
    if n < MIN_SEQUENCES:
        raise InvalidDataset(f"x has N={n} sequences; at least {MIN_SEQUENCES} are needed")
    if t < 1 or f < 1:
        raise InvalidDataset(f"x has shape {_shape(x_shape)}; T and F must be at least 1")
    if y_dtype.kind not in "iuf":
        raise InvalidDataset(
            f"y must be an integer array (class labels) or a float array (regression targets); "
            f"got dtype {y_dtype}"
        )
    if y_shape == (n,):
        target: DatasetTarget = "per_sequence"
    elif y_shape == (n, t):
        target = "per_step"
    else:
        raise InvalidDataset(
            f"y must have shape [N={n}] (one target per sequence) or [N={n}, T={t}] (one per "
            f"step) to match x {_shape(x_shape)}; got {_shape(y_shape)}"
        )
    if kind == "auto":
        kind = "classification" if y_dtype.kind in "iu" else "regression"
    if kind == "classification" and y_dtype.kind not in "iu":
        raise InvalidDataset(
            f"kind 'classification' needs integer class labels in y; got dtype {y_dtype}"
        )

    try:
        with np.load(path, allow_pickle=False) as npz:
            x = npz["x"]
            y = npz["y"]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidDataset(f"the NPZ could not be read: {exc}") from None
    if not np.isfinite(x).all():
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise InvalidDataset(f"x holds {bad} NaN or infinite values; every value must be finite")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        bad = int(np.size(y) - np.count_nonzero(np.isfinite(y)))
        raise InvalidDataset(f"y holds {bad} NaN or infinite values; every value must be finite")

    if kind == "classification":
        lo, hi = int(y.min()), int(y.max())
        if lo < 0:
            raise InvalidDataset(f"class labels in y must be >= 0; found {lo}")
        if hi + 1 > MAX_CLASSES:
            raise InvalidDataset(f"y has labels up to {hi}; at most {MAX_CLASSES} classes")
        output_size = max(hi + 1, 2)
    else:
        output_size = 1
    return DatasetFacts(
        num_sequences=int(n),
        seq_len=int(t),
        input_size=int(f),
        output_size=int(output_size),
        kind=kind,
        target=target,
    )
