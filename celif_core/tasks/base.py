"""What every task provides: data, loss, metrics, baseline, primary metric.

A task hands out batches as ``(x [B, T, F], y)`` tensors, batch-first (the models transpose to
time-major inside). Training batches are a pure function of ``(seed, step)``: resuming from a
checkpoint at step ``k`` needs no replay of a random generator, and ``N + N`` steps see exactly
the batches that ``2N`` straight steps see.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Mixed into every derived seed so that different streams (train batches, val set, test set,
# splits) never share a generator state.
_STREAMS = {"train": 0x5EED_0001, "val": 0x5EED_0002, "test": 0x5EED_0003, "split": 0x5EED_0004}


def derived_generator(seed: int, stream: str, index: int = 0) -> torch.Generator:
    """A CPU generator seeded from ``(seed, stream, index)``, stable across runs and platforms."""
    mixed = (int(seed) * 1_000_003 + _STREAMS[stream] * 7_919 + int(index) * 104_729) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


@dataclass(frozen=True)
class MetricSums:
    """Sums over an evaluation pass; ``value = total / count`` per metric."""

    totals: dict[str, float]
    counts: dict[str, float]

    def merged(self, other: MetricSums) -> MetricSums:
        totals = dict(self.totals)
        counts = dict(self.counts)
        for k, v in other.totals.items():
            totals[k] = totals.get(k, 0.0) + v
            counts[k] = counts.get(k, 0.0) + other.counts[k]
        return MetricSums(totals, counts)

    def values(self) -> dict[str, float]:
        return {k: self.totals[k] / max(self.counts[k], 1.0) for k in self.totals}


class Task:
    """Base class. Subclasses set the attributes and implement the data methods."""

    name: str
    kind: str  # "classification" | "regression" | "sequence" | "sequence_regression"
    input_size: int
    output_size: int
    seq_len: int
    primary_metric: str  # "accuracy" | "mse" | "loss"
    mode: str  # "max" | "min"
    baseline: float | None = None  # the trivial predictor's value of `baseline_metric`
    baseline_metric: str | None = None
    train_size: int | None = None  # examples per epoch (None: a fresh stream, no epochs)

    # ------------------------------------------------------------------ data
    def train_batch(
        self, step: int, batch_size: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def eval_batches(
        self, split: str, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def epoch_of(self, step: int, batch_size: int) -> int:
        if not self.train_size:
            return 0
        return (step * batch_size) // self.train_size

    # ------------------------------------------------------------------ loss and metrics
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "classification":
            return F.cross_entropy(output, target)
        if self.kind == "sequence":  # output [B, T, C], target [B, T]
            return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))
        return F.mse_loss(output.reshape(target.shape), target)

    def metric_sums(self, output: torch.Tensor, target: torch.Tensor) -> MetricSums:
        """Sums for one batch: ``loss`` always, ``accuracy`` or ``mse`` by kind."""
        n = float(target.shape[0])
        loss = float(self.loss(output, target).detach()) * n
        totals = {"loss": loss}
        counts = {"loss": n}
        if self.kind == "classification":
            totals["accuracy"] = float((output.argmax(-1) == target).sum())
            counts["accuracy"] = n
        elif self.kind == "sequence":
            correct, tokens = self._sequence_accuracy(output, target)
            totals["accuracy"], counts["accuracy"] = correct, tokens
        else:
            totals["mse"] = loss
            counts["mse"] = n
        return MetricSums(totals, counts)

    def _sequence_accuracy(self, output: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        pred = output.argmax(-1)
        return float((pred == target).sum()), float(target.numel())

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "input_size": self.input_size,
            "output_size": self.output_size,
            "seq_len": self.seq_len,
            "primary_metric": self.primary_metric,
            "mode": self.mode,
            "baseline": self.baseline,
            "baseline_metric": self.baseline_metric,
        }


def split_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]
