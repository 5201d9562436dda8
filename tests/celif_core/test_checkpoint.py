"""Checkpoints: safetensors + JSON metadata, atomic writes, rebuild from metadata, exact resume."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from safetensors import safe_open

import celif_core
from celif_core import checkpoint as ckpt
from celif_core.checkpoint import FORMAT_VERSION, load_model, read_metadata
from celif_core.tasks import build_task
from celif_core.trainer import Trainer

from .conftest import make_spec


class Recorder:
    def __init__(self):
        self.points = []
        self.checkpoints = []

    def on_metrics(self, points):
        self.points.extend(points)

    def on_checkpoint(self, info):
        self.checkpoints.append(info)

    def losses(self):
        return [p["value"] for p in self.points if p["split"] == "train"]


class StopAt(Recorder):
    def __init__(self, step):
        super().__init__()
        self.step = 0
        self.stop_at = step

    def on_step(self, step, max_steps):
        self.step = step

    def should_stop(self):
        return self.step >= self.stop_at


def _train(spec, directory, resume_from=None, callbacks=None):
    rec = callbacks or Recorder()
    trainer = Trainer(spec, checkpoint_dir=directory, callbacks=rec)
    trainer.setup(resume_from=resume_from)
    result = trainer.train()
    return trainer, result, rec


def test_checkpoint_file_format(tmp_path):
    spec = make_spec("adding", seq_len=20, training={"max_steps": 2, "checkpoint_every": 2})
    trainer, result, rec = _train(spec, tmp_path)
    info = result.checkpoints[-1]
    data = info.path.read_bytes()
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert rec.checkpoints == result.checkpoints
    meta = read_metadata(info.path)
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["library_version"] == celif_core.__version__
    assert meta["step"] == 2
    assert meta["spec"] == spec.model_dump(mode="json")  # defaults filled in
    assert meta["spec"]["model"]["neuron_params"]["alpha"] == 0.5
    assert "val_mse" in meta["metrics"]
    with safe_open(str(info.path), framework="pt") as fh:
        keys = set(fh.keys())
        assert json.loads(fh.metadata()["celif"])["step"] == 2
    assert "model.te" in keys and "model.readout.weight" in keys
    assert any(k.startswith("optim.") and k.endswith(".exp_avg") for k in keys)
    assert "rng.torch" in keys
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp files left


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "c.safetensors"
    ckpt.write_atomic(target, b"old contents")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        ckpt.write_atomic(target, b"new contents")
    assert target.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["c.safetensors"]


@pytest.mark.parametrize(
    ("task", "params", "neuron"),
    [("copy_memory", {"delay": 8}, "celif"), ("adding", {"seq_len": 25}, "plif")],
)
def test_load_model_rebuilds_from_metadata_and_reproduces_the_metric(
    tmp_path, task, params, neuron
):
    spec = make_spec(task, neuron=neuron, hidden=[12, 10], training={"max_steps": 3}, **params)
    trainer, result, _ = _train(spec, tmp_path)
    model, loaded_spec, meta = load_model(result.checkpoints[-1].path)
    assert loaded_spec == spec
    assert meta["step"] == 3
    assert not model.training
    for a, b in zip(model.state_dict().values(), trainer.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    fresh = build_task(loaded_spec)
    sums = None
    with torch.no_grad():
        for x, y in fresh.eval_batches("val", 64):
            s = fresh.metric_sums(model(x), y)
            sums = s if sums is None else sums.merged(s)
    metric = fresh.primary_metric
    assert sums.values()[metric] == pytest.approx(result.metrics[f"val_{metric}"], rel=1e-6)


def test_checkpoint_loads_without_pickle(tmp_path, monkeypatch):
    spec = make_spec("adding", seq_len=12, training={"max_steps": 1})
    _, result, _ = _train(spec, tmp_path)
    import pickle

    def no_pickle(*args, **kwargs):
        raise AssertionError("unpickling is not allowed")

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    model, _, _ = load_model(result.checkpoints[-1].path)
    assert model(torch.rand(2, 12, 2)).shape == (2, 1)


@pytest.mark.parametrize(
    ("task", "params", "extra"),
    [
        ("adding", {"seq_len": 20}, {}),
        ("copy_memory", {"delay": 6}, {"lr_schedule": "cosine", "optimizer": "adamw"}),
        ("copy_memory", {"delay": 6}, {"bptt_chunk": 9, "optimizer": "sgd"}),
    ],
)
def test_exact_resume(tmp_path, task, params, extra):
    n = 4
    training = {"max_steps": 2 * n, "checkpoint_every": n, "eval_every": 3, "lr": 0.01, **extra}
    spec = make_spec(task, hidden=[12, 12], training=training, **params)
    _, straight, rec_straight = _train(spec, tmp_path / "straight")

    # the first half: a run stopped right after its checkpoint at step n
    rec_first = StopAt(n)
    _, first, _ = _train(spec, tmp_path / "split", callbacks=rec_first)
    assert first.status == "stopped" and first.checkpoints[-1].step == n
    _, second, rec_second = _train(spec, tmp_path / "split", resume_from=first.checkpoints[-1].path)

    assert rec_first.losses() + rec_second.losses() == rec_straight.losses()
    assert second.metrics == straight.metrics
    assert second.step == straight.step == 2 * n


def test_exact_resume_with_epoch_budget_and_step_schedule(tmp_path, mnist_dir, monkeypatch):
    """max_epochs + the step schedule, stopped mid-run (in epoch 1, after one lr step): the
    resumed run's losses, lr per step and final metrics are the straight run's exactly."""
    monkeypatch.setenv("CELIF_MNIST_DIR", str(mnist_dir))
    training = {
        "max_steps": None, "max_epochs": 4, "batch_size": 16, "lr": 0.01, "eval_every": 3,
        "checkpoint_every": 4, "lr_schedule": "step", "lr_step_epochs": 1, "lr_gamma": 0.5,
        "eval_batch_size": 500,
    }  # fmt: skip
    spec = make_spec("seq_mnist", hidden=[6], train_subset=40, val_size=100, training=training)
    assert spec.total_steps == 10
    _, straight, rec_straight = _train(spec, tmp_path / "straight")
    rec_first = StopAt(4)
    _, first, _ = _train(spec, tmp_path / "split", callbacks=rec_first)
    assert first.status == "stopped" and first.checkpoints[-1].step == 4
    trainer, second, rec_second = _train(
        spec, tmp_path / "split", resume_from=first.checkpoints[-1].path
    )
    assert rec_first.losses() + rec_second.losses() == rec_straight.losses()
    assert second.metrics == straight.metrics and second.step == straight.step == 10
    assert trainer.optimizer.param_groups[0]["lr"] == 0.01 * 0.5**3  # step 9 is in epoch 3


def test_resume_rejects_a_checkpoint_of_another_model(tmp_path):
    spec = make_spec("adding", seq_len=12, training={"max_steps": 1})
    _, result, _ = _train(spec, tmp_path)
    other = make_spec("adding", seq_len=12, hidden=[5], training={"max_steps": 1})
    trainer = Trainer(other, checkpoint_dir=tmp_path / "o")
    with pytest.raises(ValueError, match="different model section"):
        trainer.setup(resume_from=result.checkpoints[-1].path)
