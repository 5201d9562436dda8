"""What the models learn: small, CPU-sized versions of the paper's comparisons.

Runs each configuration of a suite through ``celif_core.trainer.Trainer`` (no server), each in
its own process (at most ``--jobs`` at once, each with ``torch.set_num_threads(--threads)``), and
prints a markdown table: config, parameters, steps, wall seconds, best validation metric (and
its step), test metric(s), the task's trivial baseline. The validation curve of every run is
printed under the table. The figures in ``docs/results.md`` come from these commands:

    python bench/results.py --suite adding    --steps 1500 --seq-len 50
    python bench/results.py --suite copy      --steps 400  --delay 50
    python bench/results.py --suite ablation  --steps 1500 --seq-len 50
    python bench/results.py --suite smnist    --steps 800  --eval-every 100 --mnist-dir /path/to/mnist

Suites:

* ``adding``: CE-LIF vs LIF vs ALIF vs PLIF vs LSTM, same hidden sizes and steps (test MSE,
  baseline 0.167);
* ``copy``: copy memory, CE-LIF vs LIF vs ALIF vs LSTM (loss over all T+20 steps vs the
  baseline 10*ln8/(T+20); accuracy on the last 10 steps, chance 0.125);
* ``ablation``: CE-LIF's ``ce_mode`` (the paper's ablation IDs 1-6) on the adding problem;
* ``smnist``: CE-LIF with the paper's 64-88-88 network on sequential MNIST (full 10k test set).

``--cache DIR`` stores each run's result under the hash of its spec and reuses it when the same
spec is asked for again (e.g. the ablation's ``membrane_te`` row is the adding suite's CE-LIF
run); reused rows are marked. ``--json FILE`` writes all rows.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import math
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from celif_core.catalog import CE_MODES  # noqa: E402  (after the path set-up)

ABLATION_ID = {m: i + 1 for i, m in enumerate(CE_MODES)}
# The measured defaults (docs/neurons.md), passed explicitly so the figures do not move with the
# spec defaults.
SPIKING = {"surrogate_width": 1.0}
CELIF = {**SPIKING, "te_init_std": 0.1}


def neuron_params(neuron: str, ce_mode: str | None = None) -> dict[str, Any]:
    if neuron == "lstm":
        return {}
    if neuron == "celif":
        return {**CELIF, **({"ce_mode": ce_mode} if ce_mode else {})}
    return dict(SPIKING)


# ----------------------------------------------------------------------------- suites
def _training(args, steps: int, batch: int, lr: float, schedule: str = "cosine") -> dict:
    return {
        "max_steps": steps,
        "batch_size": batch,
        "lr": lr,
        "lr_schedule": schedule,
        "eval_every": max(1, args.eval_every or steps // 6),
        "checkpoint_every": steps,
        "seed": args.seed,
        "device": "cpu",
    }


def adding_configs(args) -> list[tuple[str, dict]]:
    out = []
    for neuron in args.neurons or ("celif", "lif", "alif", "plif", "lstm"):
        spec = {
            "task": {"name": "adding",
                     "params": {"seq_len": args.seq_len, "val_size": 1000, "test_size": 1000}},
            "model": {"neuron": neuron, "hidden": args.hidden or [64, 128, 128],
                      "neuron_params": neuron_params(neuron)},
            "training": _training(args, args.steps or 1500, args.batch_size or 128, args.lr or 3e-3),
        }  # fmt: skip
        out.append((neuron, spec))
    return out


def copy_configs(args) -> list[tuple[str, dict]]:
    out = []
    for neuron in args.neurons or ("celif", "lif", "alif", "lstm"):
        spec = {
            "task": {"name": "copy_memory",
                     "params": {"delay": args.delay, "val_size": 500, "test_size": 500}},
            "model": {"neuron": neuron, "hidden": args.hidden or [64, 64],
                      "neuron_params": neuron_params(neuron)},
            "training": _training(args, args.steps or 400, args.batch_size or 128, args.lr or 5e-3),
        }  # fmt: skip
        out.append((neuron, spec))
    return out


def ablation_configs(args) -> list[tuple[str, dict]]:
    out = []
    for mode in args.ce_modes or CE_MODES:
        spec = {
            "task": {"name": "adding",
                     "params": {"seq_len": args.seq_len, "val_size": 1000, "test_size": 1000}},
            "model": {"neuron": "celif", "hidden": args.hidden or [64, 128, 128],
                      "neuron_params": neuron_params("celif", mode)},
            "training": _training(args, args.steps or 1500, args.batch_size or 128, args.lr or 3e-3),
        }  # fmt: skip
        out.append((f"ID {ABLATION_ID[mode]}: celif ce_mode={mode}", spec))
    return out


def smnist_configs(args) -> list[tuple[str, dict]]:
    steps = args.steps or 300
    spec = {
        "task": {"name": "seq_mnist", "params": {"val_size": args.val_size or 1000, "seed": 0}},
        "model": {"neuron": "celif", "hidden": args.hidden or [64, 88, 88],
                  "neuron_params": neuron_params("celif")},
        "training": {**_training(args, steps, args.batch_size or 64, args.lr or 2e-3),
                     "eval_batch_size": 500},
    }  # fmt: skip
    return [("celif", spec)]


SUITES = {
    "adding": adding_configs,
    "copy": copy_configs,
    "ablation": ablation_configs,
    "smnist": smnist_configs,
}


# ----------------------------------------------------------------------------- one run
def spec_key(spec: dict) -> str:
    """Hash of the validated spec (defaults filled in), so equal configs share a key."""
    from celif_core.spec import validate_spec

    full = validate_spec(spec).to_dict()
    return hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:16]


class _Curve:
    def __init__(self):
        self.points: list[dict] = []

    def on_metrics(self, points):
        self.points.extend(points)


def run_one(label: str, spec: dict, threads: int, mnist_dir: str | None) -> dict[str, Any]:
    """Train one config in this process and return its row (runs in a child process)."""
    import torch

    from celif_core.spec import count_parameters, validate_spec
    from celif_core.trainer import DataDirs, Trainer

    torch.set_num_threads(threads)
    validated = validate_spec(spec)
    curve = _Curve()
    with tempfile.TemporaryDirectory(prefix="celif-results-") as tmp:
        trainer = Trainer(
            validated,
            checkpoint_dir=tmp,
            callbacks=curve,
            data_dirs=DataDirs(mnist=mnist_dir, download=False),
        )
        trainer.setup()
        t0 = time.perf_counter()
        result = trainer.train()
        wall = time.perf_counter() - t0
    metric = result.best["metric"]
    val_curve = [
        (p["step"], round(p["value"], 4))
        for p in curve.points
        if p["split"] == "val" and p["name"] == metric
    ]
    baseline = next((p["value"] for p in curve.points if p["split"] == "baseline"), None)
    return {
        "label": label,
        "task": validated.task.name,
        "neuron": validated.model.neuron,
        "hidden": list(validated.model.hidden),
        "params": count_parameters(validated),
        "steps": result.step,
        "batch_size": validated.training.batch_size,
        "lr": validated.training.lr,
        "wall_s": wall,
        "best_metric": metric,
        "best_value": result.best["value"],
        "best_step": result.best["step"],
        "test": {k[5:]: v for k, v in result.metrics.items() if k.startswith("test_")},
        "baseline": baseline,
        "val_curve": val_curve,
        "firing_rates": (result.telemetry or {}).get("firing_rates"),
        "backend": result.backend,
        "threads": threads,
        "spec_key": spec_key(spec),
    }


# ----------------------------------------------------------------------------- table
def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(rows: list[dict]) -> str:
    head = ("| config | params | steps | wall s | best val (step) | test | baseline |\n"
            "| --- | ---: | ---: | ---: | --- | --- | --- |")  # fmt: skip
    lines = [head]
    for r in rows:
        m = r["best_metric"]
        test = r["test"]
        if r["task"] == "adding":
            test_s = f"MSE {_fmt(test.get('mse'))}"
            base_s = f"MSE {_fmt(r['baseline'], 3)}"
        elif r["task"] == "copy_memory":
            test_s = f"loss {_fmt(test.get('loss'))}, last-10 acc {_fmt(test.get('accuracy'), 3)}"
            ratio = r["best_value"] / r["baseline"] if r["baseline"] else math.nan
            base_s = f"loss {_fmt(r['baseline'])} (best val = {ratio:.0%} of it); acc 0.125"
        else:
            test_s = f"acc {_fmt(test.get('accuracy'))} (10k)"
            base_s = "acc 0.100 (chance)"
        mark = " (reused)" if r.get("reused") else ""
        lines.append(
            f"| {r['label']}{mark} | {r['params']:,} | {r['steps']} | {r['wall_s']:.0f} | "
            f"{m} {_fmt(r['best_value'])} ({r['best_step']}) | {test_s} | {base_s} |"
        )
    return "\n".join(lines)


def curves(rows: list[dict]) -> str:
    out = []
    for r in rows:
        pts = ", ".join(f"{s}: {v}" for s, v in r["val_curve"])
        out.append(f"- {r['label']}: val {r['best_metric']} by step {{{pts}}}")
    return "\n".join(out)


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=[*SUITES, "all"], default="adding")
    p.add_argument("--steps", type=int, help="training steps per config (suite default if unset)")
    p.add_argument("--seq-len", type=int, default=50, help="adding/ablation: T")
    p.add_argument("--delay", type=int, default=50, help="copy: delay (T = delay + 20)")
    p.add_argument("--hidden", type=int, nargs="+", help="override the suite's hidden widths")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--eval-every", type=int, help="default: steps // 6")
    p.add_argument("--val-size", type=int, help="smnist: validation images (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--neurons", nargs="+", help="adding/copy: only these neurons")
    p.add_argument("--ce-modes", nargs="+", choices=CE_MODES, help="ablation: only these modes")
    p.add_argument("--jobs", type=int, default=2, help="configs trained at once (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--mnist-dir", default=os.environ.get("CELIF_MNIST_DIR"))
    p.add_argument("--cache", type=Path, help="reuse results of identical specs from this dir")
    p.add_argument("--json", type=Path, help="write the rows as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    if "smnist" in suites and not args.mnist_dir:
        print("smnist needs --mnist-dir or CELIF_MNIST_DIR", file=sys.stderr)
        return 2
    all_rows: list[dict] = []
    for suite in suites:
        configs = SUITES[suite](args)
        rows: dict[int, dict] = {}
        todo = []
        for i, (label, spec) in enumerate(configs):
            cached = args.cache / f"{spec_key(spec)}.json" if args.cache else None
            if cached is not None and cached.exists():
                row = json.loads(cached.read_text())
                rows[i] = {**row, "label": label, "reused": True}
                print(f"[{suite}] {label}: reused {cached}", file=sys.stderr)
            else:
                todo.append((i, label, spec))
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
            futures = {
                pool.submit(run_one, label, spec, args.threads, args.mnist_dir): (i, label, spec)
                for i, label, spec in todo
            }
            for fut in cf.as_completed(futures):
                i, label, spec = futures[fut]
                row = fut.result()
                rows[i] = row
                print(
                    f"[{suite}] {label}: best val {row['best_metric']} {row['best_value']:.4f} "
                    f"@{row['best_step']}, test {row['test']}, {row['wall_s']:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                if args.cache:
                    args.cache.mkdir(parents=True, exist_ok=True)
                    (args.cache / f"{spec_key(spec)}.json").write_text(json.dumps(row))
        ordered = [rows[i] for i in sorted(rows)]
        all_rows.extend({**r, "suite": suite} for r in ordered)
        print(f"\n### {suite}\n")
        print(table(ordered))
        print()
        print(curves(ordered))
        sys.stdout.flush()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(all_rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
