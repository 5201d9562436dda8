"""Tasks: data, loss, metrics and baselines for seq_mnist, ps_mnist, adding, copy_memory and
uploaded datasets. :func:`build_task` makes the task a validated job spec names."""

from __future__ import annotations

import os
from typing import Any

from celif_core.tasks.base import MetricSums, Task, derived_generator
from celif_core.tasks.dataset import DatasetTask, dataset_facts, dataset_path, read_npz
from celif_core.tasks.mnist import MNIST_FILES, MnistTask, load_mnist
from celif_core.tasks.synthetic import AddingTask, CopyMemoryTask

__all__ = [
    "MNIST_FILES",
    "AddingTask",
    "CopyMemoryTask",
    "DatasetTask",
    "MetricSums",
    "MnistTask",
    "Task",
    "build_task",
    "dataset_facts",
    "dataset_path",
    "derived_generator",
    "load_mnist",
    "read_npz",
]


def build_task(
    spec: Any,
    *,
    mnist_dir: str | os.PathLike | None = None,
    datasets_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> Task:
    """The task of a validated :class:`~celif_core.spec.JobSpec`."""
    name, p = spec.task.name, spec.task.params
    if name in ("seq_mnist", "ps_mnist"):
        return MnistTask(
            name,
            mnist_dir,
            val_size=p.val_size,
            train_subset=p.train_subset,
            seed=p.seed,
            permutation_seed=p.permutation_seed if name == "ps_mnist" else None,
            download=download,
        )
    if name == "adding":
        return AddingTask(p.seq_len, p.val_size, p.test_size, p.seed)
    if name == "copy_memory":
        return CopyMemoryTask(p.delay, p.val_size, p.test_size, p.seed)
    if name == "dataset":
        return DatasetTask(
            datasets_dir,
            dataset_id=p.dataset_id,
            kind=spec.kind,
            seq_len=p.seq_len,
            input_size=p.input_size,
            output_size=p.output_size,
            val_fraction=p.val_fraction,
            test_fraction=p.test_fraction,
            seed=p.seed,
        )
    raise ValueError(f"task.name: unknown task {name!r}")
