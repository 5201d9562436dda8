"""Tasks: generators, splits, baselines, MNIST loading and its errors, uploaded datasets."""

from __future__ import annotations

import math
import urllib.request

import numpy as np
import pytest
import torch

from celif_core.errors import DataError
from celif_core.spec import validate_spec
from celif_core.tasks import (
    MNIST_FILES,
    AddingTask,
    CopyMemoryTask,
    MnistTask,
    build_task,
    dataset_facts,
    dataset_path,
    load_mnist,
)

from .conftest import make_spec


def test_adding_generator():
    task = AddingTask(seq_len=30, val_size=50, test_size=40, seed=3)
    x, y = task.train_batch(step=7, batch_size=16, seed=0)
    assert x.shape == (16, 30, 2) and y.shape == (16,)
    markers = x[..., 1]
    assert torch.all(markers.sum(1) == 2)
    assert torch.all(markers[:, :15].sum(1) == 1) and torch.all(markers[:, 15:].sum(1) == 1)
    torch.testing.assert_close((x[..., 0] * markers).sum(1), y)
    # training batches are a pure function of (seed, step)
    x2, y2 = task.train_batch(step=7, batch_size=16, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(task.train_batch(step=8, batch_size=16, seed=0)[0], x)
    assert not torch.equal(task.train_batch(step=7, batch_size=16, seed=1)[0], x)
    # fixed validation/test sets from the task seed
    again = AddingTask(seq_len=30, val_size=50, test_size=40, seed=3)
    assert torch.equal(
        next(task.eval_batches("val", 100))[0], next(again.eval_batches("val", 100))[0]
    )
    assert sum(b[0].shape[0] for b in task.eval_batches("test", 16)) == 40
    assert task.baseline == pytest.approx(0.1667, abs=1e-3)
    assert (task.primary_metric, task.mode) == ("mse", "min")
    # predicting 1.0 scores about the baseline
    big = AddingTask(seq_len=30, val_size=4000, test_size=10, seed=0)
    _, yv = next(big.eval_batches("val", 4000))
    assert float(((yv - 1.0) ** 2).mean()) == pytest.approx(task.baseline, abs=0.01)


def test_copy_memory_generator_and_baseline():
    task = CopyMemoryTask(delay=25, val_size=64, test_size=64, seed=0)
    assert task.seq_len == 45
    x, y = task.train_batch(step=0, batch_size=32, seed=0)
    assert x.shape == (32, 45, 10) and y.shape == (32, 45)
    symbols = x.argmax(-1)
    assert torch.all(x.sum(-1) == 1)  # one-hot
    keys = symbols[:, :10]
    assert torch.all((keys >= 1) & (keys <= 8))
    assert torch.all(symbols[:, 10:35] == 0) and torch.all(symbols[:, 35:] == 9)
    assert torch.all(y[:, :35] == 0) and torch.equal(y[:, 35:], keys)
    assert task.baseline == pytest.approx(10 * math.log(8) / 45)
    # the memoryless predictor (blank, then uniform over 1-8) scores exactly the baseline
    logits = torch.full((32, 45, 10), -1e4)
    logits[:, :35, 0] = 0.0
    logits[:, 35:, 1:9] = 0.0
    assert float(task.loss(logits, y)) == pytest.approx(task.baseline, rel=1e-4)
    sums = task.metric_sums(logits, y).values()
    assert set(sums) == {"loss", "accuracy"}
    # accuracy counts only the last 10 steps
    perfect = torch.nn.functional.one_hot(y, 10).float() * 50
    assert task.metric_sums(perfect, y).values()["accuracy"] == 1.0
    assert (task.primary_metric, task.mode) == ("loss", "min")


def test_mnist_splits(full_mnist_dir):
    task = MnistTask("seq_mnist", full_mnist_dir, val_size=1000, train_subset=3000, seed=0)
    assert task.train_size == 3000
    x, y = task.train_batch(step=0, batch_size=32, seed=0)
    assert x.shape == (32, 784, 1) and y.shape == (32,) and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    xv, yv = next(task.eval_batches("val", 2000))
    assert xv.shape == (1000, 784, 1)
    assert sum(b[1].shape[0] for b in task.eval_batches("test", 4096)) == 10_000
    # val and train are disjoint (rows of the same 60k pool)
    train_rows = {bytes(r.numpy()) for r in task._train[0]}
    assert not any(bytes(r.numpy()) in train_rows for r in task._val[0][:200])
    # a batch straddling an epoch boundary still has batch_size rows, all from the train set
    xb, _ = task.train_batch(step=93, batch_size=32, seed=0)  # 93*32 = 2976 -> wraps
    assert xb.shape[0] == 32
    assert task.epoch_of(94, 32) == 1


def test_ps_mnist_fixed_permutation(mnist_dir):
    seq = MnistTask("seq_mnist", mnist_dir, val_size=100, train_subset=10, seed=0)
    ps1 = MnistTask(
        "ps_mnist", mnist_dir, val_size=100, train_subset=10, seed=0, permutation_seed=5
    )
    ps2 = MnistTask(
        "ps_mnist", mnist_dir, val_size=100, train_subset=10, seed=0, permutation_seed=5
    )
    assert torch.equal(ps1.permutation, ps2.permutation)
    xs, _ = seq.train_batch(0, 4, 0)
    xp, _ = ps1.train_batch(0, 4, 0)
    assert not torch.equal(xs, xp)
    assert torch.equal(xs[:, ps1.permutation], xp)


def test_missing_mnist_names_the_setting(tmp_path, monkeypatch):
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path, download=False)
    msg = str(err.value)
    assert "CELIF_MNIST_DIR" in msg and "--mnist-dir" in msg
    for name in MNIST_FILES.values():
        assert name in msg

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="CELIF_MNIST_DIR"):
        build_task(make_spec("seq_mnist"), mnist_dir=tmp_path)
    assert isinstance(err.value, ValueError)


def _write_npz(path, x, y):
    np.savez(path, x=x, y=y)


@pytest.mark.parametrize(
    ("target", "kind", "loss_metric"),
    [
        ("class", "classification", "accuracy"),
        ("real", "regression", "mse"),
        ("class_step", "sequence", "accuracy"),
        ("real_step", "sequence_regression", "mse"),
    ],
)
def test_dataset_task(tmp_path, target, kind, loss_metric):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 12, 3)).astype(np.float32)
    y = {
        "class": rng.integers(0, 4, size=50),
        "real": rng.normal(size=50).astype(np.float32),
        "class_step": rng.integers(0, 3, size=(50, 12)),
        "real_step": rng.normal(size=(50, 12)),
    }[target]
    _write_npz(dataset_path(tmp_path, "ds1"), x, y)
    facts = dataset_facts(dataset_path(tmp_path, "ds1"))
    spec = validate_spec(
        {"task": {"name": "dataset", "params": {"dataset_id": "ds1", "val_fraction": 0.2}},
         "model": {"hidden": [8]}},
        datasets=lambda i: facts if i == "ds1" else None,
    )  # fmt: skip
    assert spec.kind == kind
    task = build_task(spec, datasets_dir=tmp_path)
    assert task.train_size == 50 - 10 - 5
    assert task.primary_metric == loss_metric
    from celif_core.models import build_model

    model = build_model(spec.network)
    xb, yb = task.train_batch(0, 8, 0)
    out = model(xb)
    loss = task.loss(out, yb)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert loss_metric in task.metric_sums(out, yb).values()


def test_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        dataset_facts(tmp_path / "nope.npz")
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 3)), y=np.zeros(5))
    with pytest.raises(DataError, match=r"bad.npz: x must have shape \[N, T, F\]"):
        dataset_facts(tmp_path / "bad.npz")
    # the upload's rules (celif_core.dataset_rules), not looser ones of the loader's own
    np.savez(tmp_path / "few.npz", x=np.zeros((5, 4, 1)), y=np.zeros(5, np.int64))
    with pytest.raises(DataError, match="x has N=5 sequences; at least 10 are needed"):
        dataset_facts(tmp_path / "few.npz")
    np.savez(tmp_path / "extra.npz", x=np.zeros((10, 4, 1)), y=np.zeros(10), z=np.zeros(1))
    with pytest.raises(DataError, match="unexpected 'z'"):
        dataset_facts(tmp_path / "extra.npz")
    np.savez(tmp_path / "one_class.npz", x=np.zeros((10, 4, 1)), y=np.zeros(10, np.int64))
    assert dataset_facts(tmp_path / "one_class.npz")["output_size"] == 2
    with pytest.raises(DataError):
        dataset_path(tmp_path, "../etc/passwd")
