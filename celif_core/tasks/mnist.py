"""Sequential MNIST and permuted sequential MNIST (one pixel per step, T=784).

The images come from the four standard IDX ``.gz`` files in a local directory (the service's
``CELIF_MNIST_DIR`` setting, the CLI's ``--mnist-dir``). When they are absent they are
downloaded from the usual mirrors if the network allows, else :class:`DataError` names the
setting and the files.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from celif_core.errors import DataError
from celif_core.tasks.base import Task, derived_generator

log = logging.getLogger(__name__)

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
DOWNLOAD_TIMEOUT_S = 10.0


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read MNIST file {path}: {exc}") from exc
    if len(data) < 4:
        raise DataError(f"MNIST file {path} is truncated")
    _zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if dtype_code != 0x08:
        raise DataError(f"MNIST file {path} is not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"MNIST file {path} has {body.size} bytes, expected {int(np.prod(dims))}")
    return body.reshape(dims)


def _download(directory: Path, name: str) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    for mirror in MIRRORS:
        try:
            with urllib.request.urlopen(mirror + name, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                payload = resp.read()
        except Exception as exc:  # network absent or refused: try the next mirror
            log.info("MNIST download of %s from %s failed: %s", name, mirror, exc)
            continue
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / name)
        return True
    return False


def load_mnist(
    mnist_dir: str | os.PathLike | None, *, download: bool = True
) -> dict[str, np.ndarray]:
    """The four MNIST arrays: images ``uint8 [N, 784]``, labels ``int64 [N]``."""
    if mnist_dir is None:
        mnist_dir = os.environ.get("CELIF_MNIST_DIR") or Path.home() / ".cache" / "celif" / "mnist"
    directory = Path(mnist_dir)
    missing = [f for f in MNIST_FILES.values() if not (directory / f).is_file()]
    if missing and download:
        still = []
        for name in missing:
            # once a file cannot be fetched from any mirror, do not wait on the others
            if still or not _download(directory, name):
                still.append(name)
        missing = still
    if missing:
        raise DataError(
            f"MNIST files not found in {str(directory)!r} (missing: {', '.join(missing)}) and "
            f"they could not be downloaded. Put the four standard IDX files "
            f"({', '.join(MNIST_FILES.values())}) in a directory and point the setting "
            f"CELIF_MNIST_DIR (CLI: --mnist-dir) at it."
        )
    out = {k: _read_idx(directory / f) for k, f in MNIST_FILES.items()}
    for split in ("train", "test"):
        images, labels = out[f"{split}_images"], out[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.shape[0] != labels.shape[0]:
            raise DataError(
                f"MNIST {split} files have unexpected shapes {images.shape}, {labels.shape}"
            )
        out[f"{split}_images"] = images.reshape(images.shape[0], 784)
        out[f"{split}_labels"] = labels.astype(np.int64)
    return out


class MnistTask(Task):
    """Seq-MNIST (raster order) or PS-MNIST (a fixed pixel permutation), 10 classes, T=784.

    A validation split of ``val_size`` images is carved from the 60k training images by a seeded
    permutation; ``train_subset`` keeps only the first images of the rest; the 10k test images are
    for the final figure only.
    """

    kind = "classification"
    input_size = 1
    output_size = 10
    seq_len = 784
    primary_metric = "accuracy"
    mode = "max"
    baseline = 0.1
    baseline_metric = "accuracy"

    def __init__(
        self,
        name: str,
        mnist_dir: str | os.PathLike | None,
        *,
        val_size: int = 5000,
        train_subset: int | None = None,
        seed: int = 0,
        permutation_seed: int | None = None,
        download: bool = True,
    ):
        self.name = name
        data = load_mnist(mnist_dir, download=download)
        n_train = int(data["train_images"].shape[0])  # 60000 for MNIST; fewer in a test set
        if val_size >= n_train:
            raise DataError(
                f"val_size={val_size} leaves no training images: the MNIST files have {n_train}"
            )
        order = torch.randperm(n_train, generator=derived_generator(seed, "split")).numpy()
        val_idx, train_idx = order[:val_size], order[val_size:]
        if train_subset is not None:
            train_idx = train_idx[:train_subset]
        self.permutation = None
        if permutation_seed is not None:
            gen = torch.Generator().manual_seed(int(permutation_seed))
            self.permutation = torch.randperm(784, generator=gen)
        images, labels = data["train_images"], data["train_labels"]
        self._train = (torch.from_numpy(images[train_idx]), torch.from_numpy(labels[train_idx]))
        self._val = (torch.from_numpy(images[val_idx]), torch.from_numpy(labels[val_idx]))
        self._test = (
            torch.from_numpy(data["test_images"].copy()),
            torch.from_numpy(data["test_labels"].copy()),
        )
        self.train_size = int(self._train[0].shape[0])

    def to_sequence(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, 784]`` -> float ``[B, 784, 1]`` in [0, 1], permuted for PS-MNIST."""
        x = images.float() / 255.0
        if self.permutation is not None:
            x = x[:, self.permutation]
        return x.unsqueeze(-1)

    def train_batch(
        self, step: int, batch_size: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Epoch e is a seeded shuffle of the training set; step k takes its slice of the
        # concatenated epochs, so the batch depends only on (seed, step).
        n = self.train_size
        start = step * batch_size
        idx = []
        while len(idx) < batch_size:
            epoch, offset = divmod(start + len(idx), n)
            perm = torch.randperm(n, generator=derived_generator(seed, "train", epoch))
            idx.extend(perm[offset : offset + batch_size - len(idx)].tolist())
        index = torch.tensor(idx)
        images, labels = self._train
        return self.to_sequence(images[index]), labels[index]

    def eval_batches(
        self, split: str, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if split == "val":
            images, labels = self._val
        elif split == "test":
            images, labels = self._test
        else:
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        for i in range(0, images.shape[0], batch_size):
            yield self.to_sequence(images[i : i + batch_size]), labels[i : i + batch_size]
