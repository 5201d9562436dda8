"""Event-driven synaptic currents against the GEMM, side by side in one run, one torch thread.

    python bench/synapses.py [--mnist-dir ../shared/data/mnist] [--repeats 30]

Part 1: `nn.Linear` layers of the served sizes on random spikes at given firing rates, 784
rows (one 784-step sequence) and 4 x 784. Part 2: the shipped trained checkpoints
(docs/results/checkpoints/*/best.safetensors) on MNIST test digits: each layer fed by spikes,
its input the spikes of the layer below on those digits, and the whole forward with GEMMs vs
with every such layer event-driven. CPU time of this thread, the minimum of the repeats (other
load only adds to it). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from celif_core.checkpoint import load_model  # noqa: E402
from celif_core.kernels.synapses import event_linear  # noqa: E402
from celif_core.models import linear_rows  # noqa: E402

SHAPES = [(64, 256, 0.28), (256, 256, 0.22), (64, 88, 0.4), (88, 88, 0.4), (152, 152, 0.3)]


def cpu_ms(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return 1000 * best


def compare(layer: nn.Linear, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(GEMM ms, event-driven ms) of `layer` on `x`."""
    dense = cpu_ms(lambda: linear_rows(layer, x), repeats)
    return dense, cpu_ms(lambda: event_linear(layer, x), repeats)


def forward_ms(model: nn.Module, x: torch.Tensor, layers: list[int], repeats: int) -> float:
    model.use_event_synapses(layers)
    return cpu_ms(lambda: model.run(x), repeats)


def mnist_test_digits(mnist_dir: Path, n: int) -> torch.Tensor:
    raw = gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz").read()
    images = np.frombuffer(raw[16:], np.uint8).reshape(-1, 784)[:n]
    return torch.from_numpy(images.astype(np.float32) / 255.0)[:, :, None]  # [n, 784, 1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--mnist-dir", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    print("Random spikes, one thread (ms, minimum of repeats)\n")
    print("| layer | firing rate | rows | GEMM ms | event-driven ms | GEMM / event |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    with torch.inference_mode():
        for k, n, rate in SHAPES:
            layer = nn.Linear(k, n)
            for rows in (784, 4 * 784):
                x = (torch.rand(rows, k) < rate).float()
                dense, event = compare(layer, x, args.repeats)
                print(f"| {k} -> {n} | {rate:.2f} | {rows} | {dense:.3f} | {event:.3f} | {dense / event:.2f}x |")  # fmt: skip

    paths = sorted((REPO / "docs" / "results" / "checkpoints").glob("*/best.safetensors"))
    if not (args.mnist_dir / "t10k-images-idx3-ubyte.gz").exists() or not paths:
        print("\n(no MNIST or no shipped checkpoints: part 2 skipped)")
        return 0
    digits = mnist_test_digits(args.mnist_dir, 4)
    print("\nShipped checkpoints on 1 MNIST test digit (784 steps), one thread\n")
    print("| checkpoint | layer | its input's firing rate | GEMM ms | event-driven ms | forward, GEMMs ms | forward, event-driven ms |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    with torch.inference_mode():
        for path in paths:
            model, spec, _ = load_model(path)
            model.eval()
            if spec.model.neuron == "lstm" or len(spec.model.hidden) < 2:
                continue
            x = digits[:1]
            out = model.run(x, record_spikes=True)
            layers = list(range(1, len(spec.model.hidden)))
            forward_dense = forward_ms(model, x, [], args.repeats)
            forward_event = forward_ms(model, x, layers, args.repeats)
            for layer in layers:
                rows = out.spikes[layer - 1][0].contiguous()
                synapse = model.synapses[layer]
                dense, event = compare(synapse, rows, args.repeats)
                shape = f"{synapse.in_features} -> {synapse.out_features}"
                print(f"| {path.parent.name} | {layer}: {shape} | {float(rows.mean()):.2f} | {dense:.3f} | {event:.3f} | {forward_dense:.3f} | {forward_event:.3f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
