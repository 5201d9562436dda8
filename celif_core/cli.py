"""``celif train``: train a model locally, no server needed.

    celif train --task adding --seq-len 50 --neuron celif --hidden 64 64 --max-steps 500 \\
        --batch-size 128 --lr 3e-3 --out runs/adding50

Checkpoints go to ``--out``; a progress bar shows the loss and the latest validation metric; the
final test metric is printed at the end. Exit status: 0 done, 1 the job failed (e.g. NaN loss),
2 bad arguments or a bad spec (the message names the field), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from celif_core import catalog
from celif_core.errors import DataError, TrainingError
from celif_core.spec import SpecError, validate_spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="celif train",
        description="Train a CE-LIF (or baseline) network on a task, locally.",
    )
    p.add_argument(
        "--spec",
        type=Path,
        help="a JSON job spec (default with --resume: the checkpoint's); flags override its fields",
    )
    t = p.add_argument_group("task")
    t.add_argument("--task", choices=catalog.TASK_NAMES, help="task name (default: adding)")
    t.add_argument("--seq-len", type=int, help="adding: sequence length T")
    t.add_argument("--delay", type=int, help="copy_memory: blank steps between keys and markers")
    t.add_argument("--train-subset", type=int, help="MNIST: train on this many images only")
    t.add_argument("--val-size", type=int, help="validation set size")
    t.add_argument("--permutation-seed", type=int, help="ps_mnist: seed of the pixel permutation")
    t.add_argument("--dataset-id", help="dataset: id (file <datasets-dir>/<id>.npz)")
    m = p.add_argument_group("model")
    m.add_argument("--neuron", choices=catalog.NEURON_NAMES, help="neuron model (default: celif)")
    m.add_argument("--architecture", choices=catalog.ARCHITECTURES)
    m.add_argument(
        "--hidden", type=int, nargs="+", help="hidden layer widths, e.g. --hidden 64 256 256"
    )
    m.add_argument(
        "--ce-mode", choices=catalog.CE_MODES, help="celif: contextual embedding variant"
    )
    m.add_argument("--alpha", type=float)
    m.add_argument("--rho", type=float)
    m.add_argument("--theta0", type=float)
    m.add_argument("--beta", type=float, help="alif: threshold adaptation strength")
    m.add_argument("--surrogate-width", type=float)
    m.add_argument(
        "--ce-timing",
        choices=catalog.CE_TIMINGS,
        help="celif: membrane driving the threshold memory, U[t] or the pre-reset U[t-1]",
    )
    m.add_argument("--te-init-mean", type=float)
    m.add_argument("--te-init-std", type=float)
    m.add_argument(
        "--te-per-layer", action="store_true", help="one TE table per layer (te_shared=false)"
    )
    m.add_argument("--te-length", type=int)
    tr = p.add_argument_group("training")
    tr.add_argument("--max-steps", type=int)
    tr.add_argument("--max-epochs", type=int, help="budget in epochs instead of --max-steps")
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--eval-batch-size", type=int)
    tr.add_argument("--lr", type=float)
    tr.add_argument("--optimizer", choices=catalog.OPTIMIZERS)
    tr.add_argument("--weight-decay", type=float)
    tr.add_argument("--lr-schedule", choices=catalog.LR_SCHEDULES)
    tr.add_argument("--lr-step-epochs", type=int, help="step schedule: epochs per step")
    tr.add_argument("--lr-gamma", type=float, help="step schedule: factor per step")
    tr.add_argument("--grad-clip", type=float, help="max gradient norm (0 = off)")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--eval-every", type=int)
    tr.add_argument("--checkpoint-every", type=int)
    tr.add_argument("--device", choices=catalog.DEVICES)
    tr.add_argument("--backend", choices=catalog.BACKENDS)
    tr.add_argument("--memory", choices=catalog.MEMORY_MODES)
    tr.add_argument("--bptt-chunk", type=int, help="truncated BPTT window in steps")
    io = p.add_argument_group("files")
    io.add_argument(
        "--out",
        type=Path,
        default=Path("runs/celif"),
        help="checkpoint directory (default: runs/celif)",
    )
    io.add_argument("--resume", type=Path, help="resume from this checkpoint file")
    io.add_argument(
        "--mnist-dir",
        type=Path,
        default=None,
        help="directory of the MNIST IDX .gz files (default: $CELIF_MNIST_DIR)",
    )
    io.add_argument(
        "--datasets-dir", type=Path, default=None, help="directory of uploaded <id>.npz datasets"
    )
    io.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if args.spec is not None:
        spec = json.loads(args.spec.read_text())
    elif args.resume is not None:  # continue the checkpoint's own job; flags override it
        from celif_core.checkpoint import read_metadata

        spec = read_metadata(args.resume)["spec"]
    task = spec.setdefault("task", {"name": "adding"})
    if args.task is not None and args.task != task.get("name"):
        task.clear()
        task["name"] = args.task
    params = task.setdefault("params", {})
    for flag, key in (
        ("seq_len", "seq_len"),
        ("delay", "delay"),
        ("train_subset", "train_subset"),
        ("val_size", "val_size"),
        ("permutation_seed", "permutation_seed"),
        ("dataset_id", "dataset_id"),
    ):
        if getattr(args, flag) is not None:
            params[key] = getattr(args, flag)
    model = spec.setdefault("model", {})
    for flag in ("neuron", "architecture", "hidden", "te_length"):
        if getattr(args, flag) is not None:
            model[flag] = getattr(args, flag)
    if args.te_per_layer:
        model["te_shared"] = False
    np_ = model.setdefault("neuron_params", {})
    for flag in (
        "ce_mode", "ce_timing", "alpha", "rho", "theta0", "beta", "surrogate_width",
        "te_init_mean", "te_init_std",
    ):  # fmt: skip
        if getattr(args, flag) is not None:
            np_[flag] = getattr(args, flag)
    training = spec.setdefault("training", {})
    for flag in (
        "max_steps", "max_epochs", "batch_size", "eval_batch_size", "lr", "optimizer",
        "weight_decay", "lr_schedule", "lr_step_epochs", "lr_gamma", "seed", "eval_every", "checkpoint_every", "device", "backend", "memory",
        "bptt_chunk",
    ):  # fmt: skip
        if getattr(args, flag) is not None:
            training[flag] = getattr(args, flag)
    for budget, other in (("max_steps", "max_epochs"), ("max_epochs", "max_steps")):
        if getattr(args, budget) is not None and getattr(args, other) is None:
            training.pop(other, None)  # a flag's budget replaces a resumed spec's other one
    if args.grad_clip is not None:
        training["grad_clip"] = args.grad_clip if args.grad_clip > 0 else None
    return spec


class _Progress:
    """tqdm bar fed by the trainer's callbacks."""

    def __init__(self, total: int, enabled: bool, initial: int = 0):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True
        )
        self.postfix: dict[str, str] = {}
        self.points: list[dict[str, Any]] = []  # every learning-curve point, for write_metrics

    def on_metrics(self, points: list[dict[str, Any]]) -> None:
        self.points.extend(points)
        for p in points:
            if p["split"] in ("train", "val"):
                key = "loss" if p["split"] == "train" else f"val_{p['name']}"
                self.postfix[key] = f"{p['value']:.4g}"
        self.bar.set_postfix(self.postfix, refresh=False)

    def on_step(self, step: int, max_steps: int) -> None:
        self.bar.update(step - self.bar.n)

    def on_checkpoint(self, info: Any) -> None:
        best = " (best so far)" if info.is_best else ""
        self.bar.write(f"checkpoint step {info.step}: {info.path}{best}")

    def close(self) -> None:
        self.bar.close()


def _dataset_resolver(datasets_dir: Path | None):
    def resolve(dataset_id: str) -> dict[str, Any] | None:
        if datasets_dir is None:
            return None
        from celif_core.tasks.dataset import dataset_facts, dataset_path

        path = dataset_path(datasets_dir, dataset_id)
        return dataset_facts(path) if path.is_file() else None

    return resolve


METRIC_FIELDS = ("step", "epoch", "split", "name", "value", "time")


def write_metrics(out: Path, spec: Any, points: list[dict[str, Any]], result: Any) -> list[Path]:
    """Beside the checkpoints: every learning-curve point (metrics.csv), the points with the
    run's summary (metrics.json) and the curves (curves.png). A resumed run rewrites them with
    this run's points only."""
    import csv

    from celif_core.curves import render_curves

    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path, png_path = out / "metrics.csv", out / "metrics.json", out / "curves.png"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(points)
    summary = {
        "spec": spec.to_dict(),
        "step": result.step,
        "backend": result.backend,
        "best": result.best,
        "metrics": result.metrics,
        "telemetry": result.telemetry,
        "points": points,
    }
    json_path.write_text(json.dumps(_finite(summary), indent=1, default=str, allow_nan=False))
    title = f"{spec.name or spec.task.name}: {spec.model.neuron}, {result.step} steps"
    png_path.write_bytes(render_curves(title, points, "png"))
    return [csv_path, json_path, png_path]


def _finite(value: Any) -> Any:
    """NaN/inf as null: metrics.json stays standard JSON (as the API reports them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``celif train``; ``argv`` excludes the ``train`` word."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        spec = validate_spec(spec_from_args(args), datasets=_dataset_resolver(args.datasets_dir))
    except SpecError as exc:
        print(f"celif train: error: invalid spec: {exc}", file=sys.stderr)
        return 2
    except (OSError, json.JSONDecodeError, DataError, ValueError) as exc:
        print(f"celif train: error: {exc}", file=sys.stderr)
        return 2

    from celif_core.kernels import tune_allocator
    from celif_core.trainer import DataDirs, Trainer

    tune_allocator()  # a training process: reuse large blocks (docs/kernels.md, large tensors and the allocator)
    mnist_dir = args.mnist_dir or os.environ.get("CELIF_MNIST_DIR")
    progress = _Progress(spec.total_steps, enabled=not args.no_progress)
    trainer = Trainer(
        spec,
        checkpoint_dir=args.out,
        callbacks=progress,
        data_dirs=DataDirs(mnist=mnist_dir, datasets=args.datasets_dir),
    )
    try:
        trainer.setup(resume_from=args.resume)
        progress.bar.n = trainer.step
        result = trainer.train()
    except DataError as exc:
        progress.close()
        print(f"celif train: error: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        progress.close()
        print(f"celif train: training failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.close()
        print("celif train: interrupted", file=sys.stderr)
        return 130
    progress.close()
    written = write_metrics(Path(args.out), spec, progress.points, result)
    task = trainer.task
    metric = task.primary_metric
    test = result.metrics.get(f"test_{metric}")
    print(
        f"task {spec.task.name}, neuron {spec.model.neuron}, {result.step} steps, backend {result.backend}"
    )
    if task.baseline is not None:
        print(f"baseline {task.baseline_metric}: {task.baseline:.4f}")
    if result.best is not None:
        print(
            f"best val {result.best['metric']}: {result.best['value']:.4f} at step {result.best['step']}"
        )
    if result.telemetry:
        rates = ", ".join(f"{r:.3f}" for r in result.telemetry["firing_rates"])
        print(f"firing rates [{rates}], energy {result.telemetry['energy_nj']:.2f} nJ per sequence")
    print(f"checkpoints in {args.out}; metrics and curves: {', '.join(p.name for p in written)}")
    print(f"test {metric}: {test:.4f}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
