"""The rules an NPZ dataset must follow, in one place (numpy only, no torch).

Used by the API's upload (``service.datasets.validate``, which reads the arrays' headers from the
zip and streams their values in blocks) and by the training-side loader
(``celif_core.tasks.dataset``, which has the arrays in memory): both judge a file the same way
and report the same facts. The rules, also in docs/predict.md:

- exactly the arrays ``x`` and ``y``;
- ``x``: float, ``[N, T, F]``, ``N >= MIN_SEQUENCES``, ``T, F >= 1``, every value finite;
- ``y``: integer class labels ``>= 0`` (classification, at most ``MAX_CLASSES`` classes,
  ``output_size`` = max label + 1 and at least 2) or floats (regression, finite,
  ``output_size`` 1), shaped ``[N]`` (one target per sequence) or ``[N, T]`` (one per step);
  ``kind="auto"`` infers classification from integer labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from celif_core.errors import DataError

MIN_SEQUENCES = 10
MAX_CLASSES = 10_000
REQUIRED_KEYS = ("x", "y")

DatasetKind = Literal["classification", "regression"]
DatasetTarget = Literal["per_sequence", "per_step"]  # one target per sequence, or per step


class InvalidDataset(DataError):
    """The file is not a usable dataset; the message says why (the field and the form)."""


@dataclass(frozen=True)
class DatasetFacts:
    num_sequences: int
    seq_len: int
    input_size: int
    output_size: int
    kind: DatasetKind
    target: DatasetTarget

    def resolver_facts(self) -> dict[str, Any]:
        """What `validate_spec`'s dataset resolver returns for this dataset."""
        keys = ("seq_len", "input_size", "output_size", "kind", "target", "num_sequences")
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class Layout:
    """What the arrays' shapes and dtypes alone say (before any value is read)."""

    num_sequences: int
    seq_len: int
    input_size: int
    kind: DatasetKind
    target: DatasetTarget


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def not_an_npz(reason: object) -> InvalidDataset:
    return InvalidDataset(
        "not an NPZ file (np.savez / np.savez_compressed writes a zip archive of .npy "
        f"arrays): {reason}"
    )


def check_keys(keys: Iterable[str]) -> None:
    """The archive holds exactly the arrays ``x`` and ``y``."""
    keys = list(keys)
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


def check_dtype(key: str, dtype: np.dtype) -> None:
    """No object arrays: they would need unpickling (and are ragged or non-numeric)."""
    if dtype.hasobject:
        raise InvalidDataset(
            f"array {key!r} is an object array (ragged sequences or non-numeric values); "
            "pad the sequences to one length T and save numeric arrays"
        )


def check_layout(
    x_shape: Sequence[int],
    x_dtype: np.dtype,
    y_shape: Sequence[int],
    y_dtype: np.dtype,
    kind: Literal["auto", "classification", "regression"] = "auto",
) -> Layout:
    """The rules on the arrays' shapes and dtypes."""
    x_shape, y_shape = tuple(x_shape), tuple(y_shape)
    check_dtype("x", x_dtype)
    check_dtype("y", y_dtype)
    if x_dtype.kind != "f":
        raise InvalidDataset(f"x must be a float array; got dtype {x_dtype}")
    if len(x_shape) != 3:
        raise InvalidDataset(
            f"x must have shape [N, T, F] (N sequences, T steps, F features; F=1 for one value "
            f"per step); got {shape_text(x_shape)}"
        )
    n, t, f = x_shape
    if n < MIN_SEQUENCES:
        raise InvalidDataset(f"x has N={n} sequences; at least {MIN_SEQUENCES} are needed")
    if t < 1 or f < 1:
        raise InvalidDataset(f"x has shape {shape_text(x_shape)}; T and F must be at least 1")
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
            f"step) to match x {shape_text(x_shape)}; got {shape_text(y_shape)}"
        )
    if kind == "auto":
        kind = "classification" if y_dtype.kind in "iu" else "regression"
    if kind == "classification" and y_dtype.kind not in "iu":
        raise InvalidDataset(
            f"kind 'classification' needs integer class labels in y; got dtype {y_dtype}"
        )
    return Layout(int(n), int(t), int(f), kind, target)


def check_values(
    layout: Layout, x_blocks: Iterable[np.ndarray], y_blocks: Iterable[np.ndarray]
) -> DatasetFacts:
    """The rules on the values, read block by block (any blocking: whole arrays, or the chunks
    of a streamed member), and the dataset's facts."""
    bad = sum(int(c.size - np.count_nonzero(np.isfinite(c))) for c in x_blocks)
    if bad:
        raise InvalidDataset(f"x holds {bad} NaN or infinite values; every value must be finite")
    lo = hi = None
    bad = 0
    for c in y_blocks:
        if c.dtype.kind == "f":
            bad += int(c.size - np.count_nonzero(np.isfinite(c)))
        if c.size:
            lo = c.min() if lo is None else min(lo, c.min())
            hi = c.max() if hi is None else max(hi, c.max())
    if bad:
        raise InvalidDataset(f"y holds {bad} NaN or infinite values; every value must be finite")
    if layout.kind == "classification":
        lo, hi = int(lo), int(hi)
        if lo < 0:
            raise InvalidDataset(f"class labels in y must be >= 0; found {lo}")
        if hi + 1 > MAX_CLASSES:
            raise InvalidDataset(f"y has labels up to {hi}; at most {MAX_CLASSES} classes")
        output_size = max(hi + 1, 2)
    else:
        output_size = 1
    return DatasetFacts(
        num_sequences=layout.num_sequences,
        seq_len=layout.seq_len,
        input_size=layout.input_size,
        output_size=output_size,
        kind=layout.kind,
        target=layout.target,
    )


def check_arrays(
    x: np.ndarray,
    y: np.ndarray,
    kind: Literal["auto", "classification", "regression"] = "auto",
) -> DatasetFacts:
    """All the rules on arrays held in memory (the training-side loader)."""
    layout = check_layout(x.shape, x.dtype, y.shape, y.dtype, kind)
    return check_values(layout, [x.reshape(-1)], [y.reshape(-1)])
