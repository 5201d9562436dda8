"""Inputs, runner and comparison shared by the fused-kernel tests (CPU C++ and Triton)."""

from __future__ import annotations

import os

import pytest
import torch

from celif_core import kernels
from celif_core.functional import CE_MODES, fused_available, neuron_scan
from celif_core.spec import CE_TIMINGS

# (neuron, ce_mode, ce_timing): every celif ce_mode under both timings
CASES = [("lif", "none", "current"), ("alif", "spike", "current"), ("plif", "none", "current")]
CASES += [("celif", m, timing) for m in CE_MODES for timing in CE_TIMINGS]
# the ce_modes whose kernels differ between the timings (the others never read U)
TIMED_MODES = ("membrane", "membrane_te")
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def require_fused_cpu() -> None:
    """Return if the fused C++ CPU kernel builds and loads; else skip the calling test, naming
    the build error, or with CELIF_REQUIRE_FUSED=1 (CI, `.ci/run`) fail it, so an unbuilt
    kernel can never pass as skipped tests."""
    if fused_available("cpu"):
        return
    reason = f"fused CPU kernel unavailable: {kernels.cpu_extension_error()}"
    if os.environ.get("CELIF_REQUIRE_FUSED") == "1":
        pytest.fail(f"CELIF_REQUIRE_FUSED=1 but the {reason}", pytrace=False)
    pytest.skip(reason)


def inputs(neuron, dtype, *, T=24, B=5, N=13, alpha_per_neuron=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    # drive near threshold so spikes, resets and open surrogate windows all occur
    x = (torch.randn(T, B, N, generator=g, dtype=dtype) * 0.6 + 0.25).requires_grad_()
    te = (torch.randn(T + 2, N, generator=g, dtype=dtype) * 0.3).requires_grad_()
    if neuron == "plif":
        shape = (N,) if alpha_per_neuron else ()
        alpha = (torch.rand(shape, generator=g, dtype=dtype) * 0.8 + 0.1).requires_grad_()
    else:
        alpha = 0.6
    return x, te, alpha


def run(backend, x, te, neuron, p, **kw):
    r = neuron_scan(x, neuron=neuron, params=p, te=te, traces=True, backend=backend, **kw)
    weights = torch.linspace(-1, 1, r.spikes.numel(), dtype=x.dtype).reshape(r.spikes.shape)
    inputs = [x, te] + ([p["alpha"]] if isinstance(p["alpha"], torch.Tensor) else [])
    grads = torch.autograd.grad((r.spikes * weights).sum(), inputs, allow_unused=True)
    return r, grads


def assert_same(ref, fused, dtype):
    (r1, g1), (r2, g2) = ref, fused
    assert torch.equal(r1.spikes, r2.spikes)
    assert r1.spikes.mean() > 0.05  # the case actually spikes
    torch.testing.assert_close(r1.u, r2.u, **TOL[dtype])
    torch.testing.assert_close(r1.theta, r2.theta, **TOL[dtype])
    for a, b in zip(r1.state, r2.state, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
    for a, b in zip(g1, g2, strict=True):
        if a is None or b is None:  # e.g. te for modes that never read it
            assert (a is None or not a.any()) and (b is None or not b.any())
        else:
            torch.testing.assert_close(a, b, **TOL[dtype])
