"""Validation of an uploaded NPZ dataset, with numpy only (no torch, never unpickles).

`inspect_npz(path, ...)` returns the dataset's facts or raises `InvalidDataset` whose message is
the reason shown to the user. Array headers (and the zip directory's unpacked sizes, which must
agree with them) are read before any data, so an object (ragged) array or a member that would
decompress to more than the limit is refused without unpacking it; the data itself is then
checked in blocks of `CHUNK_BYTES` as it is decompressed, never held whole in memory.
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


CHUNK_BYTES = 4 * 1024 * 1024  # the data is checked in blocks of this size


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


@dataclass(frozen=True)
class _Member:
    name: str  # the zip member
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int  # bytes of the .npy header before the data


def _member_header(zf: zipfile.ZipFile, name: str, key: str) -> _Member:
    try:
        with zf.open(name) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidDataset(f"array {key!r} is not a valid .npy member: {exc}") from None
    return _Member(name, tuple(shape), dtype, bool(fortran), offset)


def array_member(zf: zipfile.ZipFile, key: str) -> _Member:
    """The header of array `key` (`x` or `y`) of a stored NPZ."""
    name = f"{key}.npy" if f"{key}.npy" in zf.namelist() else key
    return _member_header(zf, name, key)


def read_rows(zf: zipfile.ZipFile, key: str, rows: list[int]) -> np.ndarray:
    """Rows `rows` (first-axis indices) of array `key`, read by seeking in the member: memory
    for those rows only (a compressed member is decompressed up to the last row, in blocks)."""
    m = array_member(zf, key)
    row_shape = m.shape[1:]
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * m.dtype.itemsize
    out = np.empty((len(rows), *row_shape), dtype=m.dtype)
    if m.fortran and len(m.shape) > 1:  # rows are not contiguous: read the array (rare)
        with zf.open(m.name) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)[rows]
    with zf.open(m.name) as fh:
        for pos, i in sorted(enumerate(rows), key=lambda t: t[1]):  # forward seeks only
            fh.seek(m.offset + i * row_bytes)
            block = fh.read(row_bytes)
            if len(block) != row_bytes:
                raise InvalidDataset(f"array {key!r} is shorter than its header says")
            out[pos] = np.frombuffer(block, dtype=m.dtype).reshape(row_shape)
    return out


def _read_headers(zf: zipfile.ZipFile, max_array_bytes: int) -> dict[str, _Member]:
    """The arrays' declared shapes, from the .npy headers and the zip directory only: nothing
    beyond a header is decompressed, so a bomb is refused before it is unpacked."""
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
    headers: dict[str, _Member] = {}
    total = 0
    for name, key in zip(names, keys, strict=True):
        info = zf.getinfo(name)
        member = _member_header(zf, name, key)
        shape, dtype, offset = member.shape, member.dtype, member.offset
        if dtype.hasobject:
            raise InvalidDataset(
                f"array {key!r} is an object array (ragged sequences or non-numeric values); "
                "pad the sequences to one length T and save numeric arrays"
            )
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes < 0 or any(d < 0 for d in shape):
            raise InvalidDataset(f"array {key!r} declares an impossible shape {_shape(shape)}")
        total += nbytes
        if nbytes > max_array_bytes or total > max_array_bytes:
            raise InvalidDataset(
                f"array {key!r} {_shape(shape)} would take {nbytes} bytes in memory "
                f"({total} for the arrays so far), over the limit of {max_array_bytes} bytes "
                "(settings.max_dataset_bytes)"
            )
        # The zip directory states the member's unpacked size: it must be exactly the header
        # plus the data the header declares (zipfile never unpacks past the stated size).
        if info.file_size != offset + nbytes:
            raise InvalidDataset(
                f"array {key!r}: the archive says the member unpacks to {info.file_size} bytes, "
                f"its header declares {offset + nbytes} ({_shape(shape)} {dtype}); the file is "
                "truncated or corrupt"
            )
        headers[key] = member
    return headers


def _scan(zf: zipfile.ZipFile, member: _Member, chunk_bytes: int = CHUNK_BYTES):
    """The member's values as flat chunks of at most `chunk_bytes`: the data is checked while it
    is decompressed, never held whole in memory."""
    itemsize = member.dtype.itemsize
    step = max(itemsize, chunk_bytes - chunk_bytes % itemsize)
    with zf.open(member.name) as fh:
        fh.seek(member.offset)
        while block := fh.read(step):
            if len(block) % itemsize:
                raise InvalidDataset(f"array {member.name!r} ends in the middle of a value")
            yield np.frombuffer(block, dtype=member.dtype)


def inspect_npz(
    path: Path,
    *,
    kind: Literal["auto", "classification", "regression"] = "auto",
    max_array_bytes: int,
) -> DatasetFacts:
    """Validate the NPZ at `path` and return its facts; raise InvalidDataset with the reason."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidDataset(
            "not an NPZ file (np.savez / np.savez_compressed writes a zip archive of .npy "
            f"arrays): {exc}"
        ) from None
    with zf:
        headers = _read_headers(zf, max_array_bytes)
        return _check_arrays(zf, headers, kind)


def _check_arrays(zf: zipfile.ZipFile, headers: dict[str, _Member], kind: str) -> DatasetFacts:
    x_m, y_m = headers["x"], headers["y"]
    (x_shape, x_dtype), (y_shape, y_dtype) = (x_m.shape, x_m.dtype), (y_m.shape, y_m.dtype)
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
        bad = sum(int(c.size - np.count_nonzero(np.isfinite(c))) for c in _scan(zf, x_m))
        if bad:
            raise InvalidDataset(
                f"x holds {bad} NaN or infinite values; every value must be finite"
            )
        lo = hi = None
        bad = 0
        for c in _scan(zf, y_m):
            if c.dtype.kind == "f":
                bad += int(c.size - np.count_nonzero(np.isfinite(c)))
            if c.size:
                lo = c.min() if lo is None else min(lo, c.min())
                hi = c.max() if hi is None else max(hi, c.max())
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidDataset(f"the NPZ could not be read: {exc}") from None
    if bad:
        raise InvalidDataset(f"y holds {bad} NaN or infinite values; every value must be finite")

    if kind == "classification":
        lo, hi = int(lo), int(hi)
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
