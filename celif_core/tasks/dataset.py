"""An uploaded NPZ dataset: ``x [N, T, F]`` float, ``y [N]`` or ``[N, T]`` (the rules:
`celif_core.dataset_rules`, shared with the API's upload).

Stored at ``<datasets_dir>/<dataset_id>.npz``. Integer targets are classes, float targets are
reals; ``y [N, T]`` is a per-step target. A seeded split carves test and validation sets by the
fractions in the params; the rest is training data.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from celif_core.dataset_rules import (
    DatasetFacts,
    InvalidDataset,
    check_arrays,
    check_keys,
    not_an_npz,
)
from celif_core.errors import DataError
from celif_core.tasks.base import Task, derived_generator, split_batches

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def dataset_path(datasets_dir: str | os.PathLike, dataset_id: str) -> Path:
    if not _ID.match(dataset_id) or dataset_id.startswith("."):
        raise DataError(f"dataset_id must match [A-Za-z0-9_.-]{{1,64}}, got {dataset_id!r}")
    return Path(datasets_dir) / f"{dataset_id}.npz"


def read_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read ``x`` and ``y`` (never unpickles) and check them by `celif_core.dataset_rules`, the
    rules the API's upload applies; a refusal is an `InvalidDataset` (a `DataError`) naming
    the file."""
    x, y = _load(path)
    _check(path, x, y)
    return x, y


def dataset_facts(path: str | os.PathLike) -> dict[str, Any]:
    """What `validate_spec`'s dataset resolver returns: seq_len, input_size, output_size, kind,
    target (``per_sequence`` / ``per_step``), num_sequences; the facts the API's upload stores
    for the same file."""
    return _check(path, *_load(path)).resolver_facts()


def _load(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    try:
        zipfile.ZipFile(path).close()  # np.load would read any other file as a pickle
        with np.load(path, allow_pickle=False) as npz:
            check_keys(npz.files)
            return npz["x"], npz["y"]
    except FileNotFoundError as exc:
        raise DataError(f"dataset file {path} does not exist") from exc
    except InvalidDataset as exc:
        raise InvalidDataset(f"{path}: {exc}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidDataset(f"{path}: {not_an_npz(exc)}") from None
    except ValueError as exc:  # an object array (allow_pickle=False), a corrupt member
        raise InvalidDataset(f"{path}: the arrays could not be read: {exc}") from None


def _check(path: str | os.PathLike, x: np.ndarray, y: np.ndarray) -> DatasetFacts:
    try:
        return check_arrays(x, y)
    except InvalidDataset as exc:
        raise InvalidDataset(f"{path}: {exc}") from None


class DatasetTask(Task):
    name = "dataset"

    def __init__(
        self,
        datasets_dir: str | os.PathLike | None,
        *,
        dataset_id: str,
        kind: str,
        seq_len: int,
        input_size: int,
        output_size: int,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
    ):
        if datasets_dir is None:
            raise DataError(
                "the dataset task needs a datasets directory (setting CELIF_DATASETS_DIR, CLI: --datasets-dir)"
            )
        x, y = read_npz(dataset_path(datasets_dir, dataset_id))
        if list(x.shape[1:]) != [seq_len, input_size]:
            raise DataError(
                f"dataset {dataset_id!r} has x of shape {list(x.shape)}, the job expects "
                f"[N, {seq_len}, {input_size}]"
            )
        self.kind = kind
        self.seq_len, self.input_size, self.output_size = seq_len, input_size, output_size
        classes = kind in ("classification", "sequence")
        if classes and not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"dataset {dataset_id!r}: kind {kind!r} needs integer labels, got {y.dtype}"
            )
        if classes and (y.min() < 0 or y.max() >= output_size):
            raise DataError(f"dataset {dataset_id!r}: labels must lie in [0, {output_size})")
        self.primary_metric, self.mode = ("accuracy", "max") if classes else ("mse", "min")
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        yt = torch.from_numpy(y.astype(np.int64) if classes else y.astype(np.float32))
        n = xt.shape[0]
        order = torch.randperm(n, generator=derived_generator(seed, "split"))
        n_test = max(1, round(n * test_fraction))
        n_val = max(1, round(n * val_fraction))
        test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
        if train.numel() == 0:
            raise DataError(f"dataset {dataset_id!r} has too few examples ({n}) to split")
        self._train = (xt[train], yt[train])
        self._val = (xt[val], yt[val])
        self._test = (xt[test], yt[test])
        self.train_size = int(train.numel())
        if classes:
            self.baseline_metric = "accuracy"
            counts = torch.bincount(self._train[1].reshape(-1), minlength=output_size)
            self.baseline = float(counts.max()) / float(counts.sum())  # majority class
        else:
            self.baseline_metric = "mse"
            self.baseline = float(((self._val[1] - self._train[1].mean()) ** 2).mean())

    def train_batch(
        self, step: int, batch_size: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.train_size
        start = step * batch_size
        idx: list[int] = []
        while len(idx) < batch_size:
            epoch, offset = divmod(start + len(idx), n)
            perm = torch.randperm(n, generator=derived_generator(seed, "train", epoch))
            idx.extend(perm[offset : offset + batch_size - len(idx)].tolist())
        index = torch.tensor(idx)
        return self._train[0][index], self._train[1][index]

    def eval_batches(
        self, split: str, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if split == "val":
            x, y = self._val
        elif split == "test":
            x, y = self._test
        else:
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        return split_batches(x, y, batch_size)
