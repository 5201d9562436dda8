"""Synthetic long-memory tasks: the adding problem and copy memory (DESIGN.md section 4).

Each draws from a seeded generator: the validation and test sets are fixed by the task's own
``seed`` param; training batches are fresh, a pure function of ``(training seed, step)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from celif_core.tasks.base import Task, derived_generator, split_batches


class _GeneratedTask(Task):
    """A task whose examples come from ``generate(n, gen)``: fixed val/test sets drawn from the
    task's own ``seed``, fresh training batches drawn from ``(training seed, step)``."""

    def generate(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _make_eval_sets(self, val_size: int, test_size: int, seed: int) -> None:
        self._val = self.generate(val_size, derived_generator(seed, "val"))
        self._test = self.generate(test_size, derived_generator(seed, "test"))

    def train_batch(
        self, step: int, batch_size: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.generate(batch_size, derived_generator(seed, "train", step))

    def eval_batches(
        self, split: str, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = _pick(self, split)
        return split_batches(x, y, batch_size)


class AddingTask(_GeneratedTask):
    """Input ``[value ~ U[0,1], marker]`` per step; one marker in each half; target = sum of the
    two marked values. Predicting the mean (1.0) scores MSE 1/6 ~ 0.167 (the baseline)."""

    name = "adding"
    kind = "regression"
    input_size = 2
    output_size = 1
    primary_metric = "mse"
    mode = "min"
    baseline = 1.0 / 6.0
    baseline_metric = "mse"

    def __init__(self, seq_len: int, val_size: int = 1000, test_size: int = 1000, seed: int = 0):
        if seq_len < 2:
            raise ValueError(f"adding: seq_len must be >= 2, got {seq_len}")
        self.seq_len = int(seq_len)
        self._make_eval_sets(val_size, test_size, seed)

    def generate(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.seq_len
        values = torch.rand(n, t, generator=gen)
        half = t // 2
        first = torch.randint(0, half, (n,), generator=gen)
        second = torch.randint(half, t, (n,), generator=gen)
        markers = torch.zeros(n, t)
        rows = torch.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        x = torch.stack([values, markers], dim=-1)  # [N, T, 2]
        y = values[rows, first] + values[rows, second]  # [N]
        return x, y


class CopyMemoryTask(_GeneratedTask):
    """One-hot of 10 symbols: 10 keys drawn from 1-8, ``delay`` blanks (symbol 0), 10 markers
    (symbol 9). Target: blank (0) everywhere except the last 10 steps, which must repeat the keys.
    The loss (cross-entropy) is over all ``delay + 20`` steps; accuracy over the last 10. The
    memoryless baseline (blanks, then uniform over the 8 key symbols) scores
    ``10 * ln 8 / (delay + 20)``."""

    name = "copy_memory"
    kind = "sequence"
    input_size = 10
    output_size = 10
    primary_metric = "loss"
    mode = "min"
    baseline_metric = "loss"
    n_keys = 10

    def __init__(self, delay: int, val_size: int = 1000, test_size: int = 1000, seed: int = 0):
        if delay < 1:
            raise ValueError(f"copy_memory: delay must be >= 1, got {delay}")
        self.delay = int(delay)
        self.seq_len = self.delay + 2 * self.n_keys
        self.baseline = self.n_keys * math.log(8) / self.seq_len
        self._make_eval_sets(val_size, test_size, seed)

    def generate(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k, t = self.n_keys, self.seq_len
        keys = torch.randint(1, 9, (n, k), generator=gen)
        symbols = torch.zeros(n, t, dtype=torch.long)
        symbols[:, :k] = keys
        symbols[:, -k:] = 9
        x = torch.nn.functional.one_hot(symbols, 10).float()  # [N, T, 10]
        y = torch.zeros(n, t, dtype=torch.long)
        y[:, -k:] = keys
        return x, y

    def _sequence_accuracy(self, output: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        k = self.n_keys
        pred = output[:, -k:].argmax(-1)
        return float((pred == target[:, -k:]).sum()), float(target[:, -k:].numel())


def _pick(task: _GeneratedTask, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if split == "val":
        return task._val
    if split == "test":
        return task._test
    raise ValueError(f"split must be 'val' or 'test', got {split!r}")
