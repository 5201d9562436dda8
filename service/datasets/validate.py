"""Validation of an uploaded NPZ dataset, with numpy only (no torch, never unpickles).

`inspect_npz(path, ...)` returns the dataset's facts or raises `InvalidDataset` whose message is
the reason shown to the user. The rules themselves are `celif_core.dataset_rules` (the same the
training-side loader applies); this module feeds them from the archive without loading it.
Array headers (and the zip directory's unpacked sizes, which must agree with them) are read
before any data, so an object (ragged) array or a member that would decompress to more than the
limit is refused without unpacking it; the data itself is then checked in blocks of
`CHUNK_BYTES` as it is decompressed, never held whole in memory.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from celif_core.dataset_rules import (
    DatasetFacts,
    DatasetKind,
    DatasetTarget,
    InvalidDataset,
    check_dtype,
    check_keys,
    check_layout,
    check_values,
    not_an_npz,
)
from celif_core.dataset_rules import shape_text as _shape

__all__ = [
    "CHUNK_BYTES",
    "DatasetFacts",
    "DatasetKind",
    "DatasetTarget",
    "InvalidDataset",
    "array_member",
    "inspect_npz",
    "read_rows",
]

_Kind = Literal["auto", "classification", "regression"]
CHUNK_BYTES = 4 * 1024 * 1024  # the data is checked in blocks of this size


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
    check_keys(keys)
    headers: dict[str, _Member] = {}
    total = 0
    for name, key in zip(names, keys, strict=True):
        info = zf.getinfo(name)
        member = _member_header(zf, name, key)
        shape, dtype, offset = member.shape, member.dtype, member.offset
        check_dtype(key, dtype)  # before its size: an object array has no data size
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
    kind: _Kind = "auto",
    max_array_bytes: int,
) -> DatasetFacts:
    """Validate the NPZ at `path` and return its facts; raise InvalidDataset with the reason."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise not_an_npz(exc) from None
    with zf:
        headers = _read_headers(zf, max_array_bytes)
        return _check_arrays(zf, headers, kind)


def _check_arrays(zf: zipfile.ZipFile, headers: dict[str, _Member], kind: _Kind) -> DatasetFacts:
    x_m, y_m = headers["x"], headers["y"]
    layout = check_layout(x_m.shape, x_m.dtype, y_m.shape, y_m.dtype, kind)
    try:
        return check_values(layout, _scan(zf, x_m), _scan(zf, y_m))
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidDataset(f"the NPZ could not be read: {exc}") from None
