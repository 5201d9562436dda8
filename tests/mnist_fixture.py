"""MNIST for the tests: a small generated set in the real IDX format, and the real set if present.

Most tests need digits, not *the* digits: the loader, the tasks, training, checkpoints, predict
and the dashboard's digit panel run on `write_mnist_fixture`'s 5,620 synthetic digits
(seven-segment strokes, jittered and noisy, labels in the test split starting 7, 2, 1, 0, 4 like
the real t10k set), written as the four standard `.gz` IDX files. The suite points
CELIF_MNIST_DIR (and so every subprocess it starts) at them; `tests/conftest.py` keeps the
directory the caller gave in `REAL_MNIST_DIR` for the few tests that need the full 70k images
(learning on MNIST), which use the `full_mnist_dir` fixture.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from celif_core.tasks.mnist import MNIST_FILES

TRAIN_SIZE = 5500  # the default val_size (5000) must leave training images
TEST_SIZE = 120
# The first labels of the real t10k set, so tests that name sample targets hold on both sets.
TEST_LABEL_PREFIX = (7, 2, 1, 0, 4, 1, 4, 9, 5, 9)

# Seven-segment strokes: (row0, row1, col0, col1) boxes on a 28x28 canvas.
_SEGMENTS = {
    "a": (5, 7, 9, 19),
    "b": (5, 14, 17, 19),
    "c": (14, 23, 17, 19),
    "d": (21, 23, 9, 19),
    "e": (14, 23, 9, 11),
    "f": (5, 14, 9, 11),
    "g": (13, 15, 9, 19),
}
_DIGITS = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abfgcd")


def _digit(label: int, rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((28, 28), dtype=np.float64)
    for seg in _DIGITS[label]:
        r0, r1, c0, c1 = _SEGMENTS[seg]
        img[r0:r1, c0:c1] = 1.0
    img = np.roll(img, (int(rng.integers(-3, 4)), int(rng.integers(-4, 5))), axis=(0, 1))
    img = img * rng.uniform(0.6, 1.0) + rng.normal(0.0, 0.08, img.shape)
    return (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def write_mnist_fixture(directory: Path, *, seed: int = 0) -> Path:
    """Write the four MNIST IDX .gz files of a small synthetic digit set into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_labels = np.arange(TRAIN_SIZE) % 10
    rng.shuffle(train_labels)
    test_labels = np.concatenate(
        [TEST_LABEL_PREFIX, rng.integers(0, 10, TEST_SIZE - len(TEST_LABEL_PREFIX))]
    )
    arrays = {
        "train_labels": train_labels,
        "train_images": np.stack([_digit(int(y), rng) for y in train_labels]),
        "test_labels": test_labels,
        "test_images": np.stack([_digit(int(y), rng) for y in test_labels]),
    }
    for key, name in MNIST_FILES.items():
        _write_idx(directory / name, arrays[key])
    return directory


def has_mnist(directory: str | os.PathLike | None) -> bool:
    return directory is not None and all(
        (Path(directory) / name).is_file() for name in MNIST_FILES.values()
    )


def require_full_mnist(directory: str | os.PathLike | None) -> Path:
    """The real MNIST directory, or a skip naming what is missing; with CELIF_REQUIRE_MNIST=1
    (CI) a failure instead, so a missing data set can never pass as a skipped test."""
    if has_mnist(directory):
        return Path(directory)
    reason = (
        f"needs the full MNIST set: the four IDX .gz files not found in {directory} "
        f"(set CELIF_MNIST_DIR to a directory holding them)"
    )
    if os.environ.get("CELIF_REQUIRE_MNIST") == "1":
        pytest.fail(f"CELIF_REQUIRE_MNIST=1 but the test {reason}", pytrace=False)
    pytest.skip(reason)
