"""Shared fixtures of the celif_core tests."""

from __future__ import annotations

import pytest
import torch

from celif_core.spec import validate_spec


@pytest.fixture(autouse=True)
def _torch_isolation():
    """Each test gets the same process-wide torch RNG state and thread count back."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
    torch.set_num_threads(threads)


def make_spec(task: str = "adding", **overrides):
    """A small validated spec: ``make_spec("adding", seq_len=20, hidden=[16], max_steps=5)``."""
    task_params = {}
    model: dict = {
        "neuron": overrides.pop("neuron", "celif"),
        "hidden": overrides.pop("hidden", [16, 16]),
    }
    for key in ("architecture", "te_shared", "te_length"):
        if key in overrides:
            model[key] = overrides.pop(key)
    model["neuron_params"] = overrides.pop("neuron_params", {})
    for key in (
        "seq_len",
        "delay",
        "train_subset",
        "val_size",
        "test_size",
        "permutation_seed",
        "dataset_id",
    ):
        if key in overrides:
            task_params[key] = overrides.pop(key)
    if task in ("adding", "copy_memory"):  # small fixed eval sets keep the tests fast
        task_params.setdefault("val_size", 64)
        task_params.setdefault("test_size", 64)
    training = {
        "batch_size": 8,
        "eval_batch_size": 64,
        "max_steps": 4,
        "eval_every": 2,
        "checkpoint_every": 2,
    }
    training.update(overrides.pop("training", {}))
    training.update(overrides)
    spec = {"task": {"name": task, "params": task_params}, "model": model, "training": training}
    return validate_spec(spec)
