"""Event-driven synaptic currents for inference on the CPU (``synapse_cpu.cpp``).

A spiking layer's synapses multiply the previous layer's spikes, rows of mostly 0s and some 1s.
``event_linear(layer, x)`` computes ``layer(x)`` for such an ``x [M, K]`` by adding, for each
spike, one row of the weight's transpose: cost proportional to the spikes, where a dense GEMM
pays for every input. Measured (`bench/synapses.py`, docs/benchmarks.md): faster on wide layers
(256 -> 256 at firing rate 0.22: 1.35x, 1.88x at 4 sequences), slower on narrow ones (88 -> 88
at 0.4: 0.84x), so the service chooses per layer (`service.inference.calibrate_event_synapses`).

Inference only: no autograd (a training step needs the dense GEMM's backward anyway), and
``None`` when it does not apply (gradients on, not a CPU float tensor, the extension
unavailable), so callers fall back to the dense product. Each row's result is independent of
the other rows (batched == alone, bit for bit); against a BLAS GEMM it may differ in the last
bits (another summation order), as two BLAS libraries do.
"""

from __future__ import annotations

import torch
from torch import nn

from celif_core.kernels import load_cpu_extension

LANES = 16  # synapse_cpu.cpp: columns are padded to whole 16-float vectors


def _version_of(t: torch.Tensor) -> tuple:
    # Tensors made under inference_mode keep no version counter (and can only be changed in
    # place under inference_mode): their storage and shape are the key then.
    return (t.data_ptr(), tuple(t.shape), None if t.is_inference() else t._version)


def _padded_operands(layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """(``weight.T`` [K, P], bias [P]) zero-padded to P = N rounded up to 16 columns, kept on
    the layer until its weight or bias changes (version counter, storage): built once per
    loaded model, not per forward."""
    w, b = layer.weight, layer.bias
    key = (_version_of(w), None if b is None else _version_of(b))
    cached = getattr(layer, "_event_operands", None)
    if cached is None or cached[0] != key:
        n, k = w.shape
        p = -(-n // LANES) * LANES
        wt = w.new_zeros(k, p)
        wt[:, :n] = w.detach().t()
        bias = w.new_zeros(p)
        if b is not None:
            bias[:n] = b.detach()
        cached = (key, wt, bias)
        layer._event_operands = cached
    return cached[1], cached[2]


def event_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
    """``layer(x)`` for ``x [M, K]`` in time proportional to its nonzeros; ``None`` where it
    does not apply (use ``layer(x)``)."""
    if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    if layer.weight.device.type != "cpu" or layer.weight.dtype != torch.float32:
        return None
    ext = load_cpu_extension()
    if ext is None:
        return None
    wt, bias = _padded_operands(layer)
    return ext.event_linear(x, wt, bias, layer.weight.shape[0])
