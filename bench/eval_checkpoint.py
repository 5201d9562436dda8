"""Test (and validation) figures of saved checkpoints, e.g. the best checkpoint of a run that
has not finished (a job evaluates its test set only at the end).

    CELIF_MNIST_DIR=... python bench/eval_checkpoint.py docs/results/checkpoints/*/best.safetensors

Prints one JSON line per checkpoint: its step, the test and val metrics, and seconds taken.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from celif_core.checkpoint import read_metadata
from celif_core.spec import NO_LIMITS, validate_spec
from celif_core.trainer import DataDirs, Trainer


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    dirs = DataDirs(mnist=os.environ.get("CELIF_MNIST_DIR"), download=False)
    for path in paths:
        meta = read_metadata(path)
        spec = validate_spec(meta["spec"], limits=NO_LIMITS)
        with tempfile.TemporaryDirectory() as scratch:
            trainer = Trainer(spec, checkpoint_dir=scratch, data_dirs=dirs)
            trainer.setup(resume_from=path)
            start = time.perf_counter()
            test, val = trainer.evaluate("test"), trainer.evaluate("val")
            seconds = round(time.perf_counter() - start, 1)
        print(json.dumps({"checkpoint": path, "step": meta.get("step"), "test": test, "val": val,
                          "seconds": seconds}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
