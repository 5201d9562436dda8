"""Test (and validation) figures of saved checkpoints, e.g. the best checkpoint of a run that
has not finished (a job evaluates its test set only at the end).

    CELIF_MNIST_DIR=... python bench/eval_checkpoint.py docs/results/checkpoints/*/best.safetensors
    # the test set only, with event-driven synaptic currents (what /predict may run) against GEMMs
    ... python bench/eval_checkpoint.py --splits test --synapses dense,event CHECKPOINT

Prints one JSON line per checkpoint and synapse mode: its step, the metrics of each split, and
seconds taken; with two synapse modes, how many test predictions they agree on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from celif_core.checkpoint import read_metadata
from celif_core.spec import NO_LIMITS, validate_spec
from celif_core.trainer import DataDirs, Trainer


def predictions(trainer: Trainer) -> torch.Tensor:
    """The test set's predicted classes (classification tasks)."""
    out = []
    for x, _ in trainer.task.eval_batches("test", trainer.spec.training.eval_batch_size):
        out.append(trainer.model.run(x.to(trainer.device)).output.argmax(-1).cpu())
    return torch.cat(out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("paths", nargs="+", help="checkpoint files")
    p.add_argument("--splits", default="test,val", help="comma-separated: test, val")
    p.add_argument("--synapses", default="dense", help="comma-separated: dense, event (layers >= 1)")  # fmt: skip
    args = p.parse_args(argv)
    splits = [s for s in args.splits.split(",") if s]
    modes = [m for m in args.synapses.split(",") if m]
    if not set(splits) <= {"test", "val"} or not set(modes) <= {"dense", "event"}:
        p.error("--splits takes test and/or val, --synapses dense and/or event")
    dirs = DataDirs(mnist=os.environ.get("CELIF_MNIST_DIR"), download=False)
    for path in args.paths:
        meta = read_metadata(path)
        spec = validate_spec(meta["spec"], limits=NO_LIMITS)
        predicted = {}
        with tempfile.TemporaryDirectory() as scratch:
            trainer = Trainer(spec, checkpoint_dir=scratch, data_dirs=dirs)
            trainer.setup(resume_from=path)
            for mode in modes:
                layers = range(1, len(spec.model.hidden)) if mode == "event" else ()
                trainer.model.use_event_synapses(layers)
                start = time.perf_counter()
                with torch.inference_mode():
                    metrics = {split: trainer.evaluate(split) for split in splits}
                seconds = round(time.perf_counter() - start, 1)
                if len(modes) > 1 and spec.kind == "classification":
                    with torch.inference_mode():
                        predicted[mode] = predictions(trainer)
                print(json.dumps({"checkpoint": path, "step": meta.get("step"), "synapses": mode,
                                  **metrics, "seconds": seconds}), flush=True)  # fmt: skip
        if len(predicted) == 2:
            a, b = predicted.values()
            print(json.dumps({"checkpoint": path, "test_predictions": len(a),
                              "same_class_dense_vs_event": int((a == b).sum())}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
