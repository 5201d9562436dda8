"""The Triton scan against the reference loop.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``), on CPU tensors:
the same kernel source, the same loads, stores, masks and arithmetic, executed by NumPy. That
checks the kernel's logic (every neuron, ce_mode, dtype, memory mode, odd sizes across program
blocks) in CI; it says nothing about compiled-GPU performance. The CUDA tests at the end run the
compiled kernel and are skipped where no GPU is present. ``triton`` is a dev dependency, so a
missing install fails these tests instead of skipping them.
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

import celif_core.kernels as kernels
from celif_core.functional import NeuronState, active_backend, neuron_scan

from .kernel_cases import CASES, assert_same, inputs, run

MODULE = "celif_core.kernels.scan_triton"


@pytest.fixture(scope="module")
def interpreter():
    """Re-import the kernel module with Triton's interpreter on (it is chosen at decoration)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TRITON_INTERPRET", "1")
    module = importlib.reload(importlib.import_module(MODULE))
    assert module.INTERPRETED
    yield module
    patch.undo()
    importlib.reload(module)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("neuron,ce_mode", CASES)
def test_triton_matches_reference(interpreter, neuron, ce_mode, detach_reset, dtype):
    x, te, alpha = inputs(neuron, dtype, T=16, B=3, N=11)
    p = dict(alpha=alpha, rho=0.9, theta0=0.3, beta=1.8, surrogate_width=0.5)
    p.update(ce_mode=ce_mode, detach_reset=detach_reset)
    assert_same(run("reference", x, te, neuron, p), run("triton", x, te, neuron, p), dtype)


@pytest.mark.parametrize("memory", ["save", "recompute"])
@pytest.mark.parametrize("ce_mode", ["membrane_te", "spike"])
def test_triton_memory_modes(interpreter, ce_mode, memory):
    x, te, _ = inputs("celif", torch.float32, T=16, B=3, N=11, seed=1)
    p = dict(alpha=0.5, rho=0.99, theta0=0.3, surrogate_width=0.5, ce_mode=ce_mode)
    ref = run("reference", x, te, "celif", p)
    assert_same(ref, run("triton", x, te, "celif", p, memory=memory), torch.float32)


@pytest.mark.parametrize("per_neuron", [False, True])
def test_triton_plif_alpha_gradient(interpreter, per_neuron):
    x, te, alpha = inputs("plif", torch.float64, T=16, B=3, N=11, alpha_per_neuron=per_neuron)
    p = dict(alpha=alpha, theta0=0.3, surrogate_width=0.5)
    ref, tri = run("reference", x, te, "plif", p), run("triton", x, te, "plif", p)
    assert_same(ref, tri, torch.float64)
    assert tri[1][2].shape == alpha.shape and tri[1][2].abs().sum() > 0


def test_triton_blocks_and_state_carry(interpreter):
    # B*N = 300 spans three 128-element program blocks, the last one partly masked
    x, te, _ = inputs("celif", torch.float32, T=10, B=4, N=75, seed=3)
    g = torch.Generator().manual_seed(4)
    st = NeuronState(*(torch.rand(4, 75, generator=g) for _ in range(3)))
    st = st._replace(s=(st.s > 0.5).float())
    p = dict(alpha=0.5, rho=0.9, theta0=0.3, surrogate_width=0.5)
    r1 = neuron_scan(x, neuron="celif", params=p, te=te, state=st, backend="reference")
    r2 = neuron_scan(x, neuron="celif", params=p, te=te, state=st, backend="triton")
    assert torch.equal(r1.spikes, r2.spikes)
    for a, b in zip(r1.state, r2.state, strict=True):
        torch.testing.assert_close(a, b)
    gx1, gt1 = torch.autograd.grad(r1.spikes.sum(), [x, te])
    gx2, gt2 = torch.autograd.grad(r2.spikes.sum(), [x, te])
    torch.testing.assert_close(gx1, gx2)
    torch.testing.assert_close(gt1, gt2)


def test_triton_spikes_exactly_at_threshold(interpreter):
    # H(0) = 1: a membrane exactly at theta0 spikes (0.25 and 0.5 are exact in binary)
    x = torch.tensor([0.5, 0.25, 0.25, 0.5, 0.0]).reshape(5, 1, 1).repeat(1, 2, 3)
    p = dict(alpha=1.0, theta0=0.5, surrogate_width=0.5)
    spikes = neuron_scan(x, neuron="lif", params=p, backend="triton").spikes
    assert spikes[:, 0, 0].tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]
    ref = neuron_scan(x, neuron="lif", params=p, backend="reference").spikes
    assert torch.equal(spikes, ref)


def test_triton_on_cpu_refused_without_interpreter():
    module = importlib.import_module(MODULE)
    if module.INTERPRETED:
        pytest.skip("TRITON_INTERPRET=1 is set for the whole run")
    x = torch.randn(4, 2, 3)
    p = dict(alpha=0.5, theta0=0.3, surrogate_width=0.5)
    with pytest.raises(ValueError, match="backend='triton' is not available.*TRITON_INTERPRET"):
        neuron_scan(x, neuron="lif", params=p, backend="triton")


def test_missing_triton_falls_back_with_reason(monkeypatch, caplog):
    # as if triton were not installed: "auto" on CUDA would run the reference, "triton" says why
    monkeypatch.setitem(sys.modules, MODULE, None)
    monkeypatch.delattr(kernels, "scan_triton", raising=False)
    monkeypatch.setattr(kernels, "_state", {"tried": False, "ext": None, "error": None})
    with caplog.at_level("WARNING"):
        assert kernels.load_triton() is None
    assert "Triton kernel unavailable" in caplog.text
    assert active_backend("cuda") == "reference"
    x = torch.randn(4, 2, 3)
    p = dict(alpha=0.5, theta0=0.3, surrogate_width=0.5)
    with pytest.raises(ValueError, match="backend='triton' is not available: Triton is not"):
        neuron_scan(x, neuron="lif", params=p, backend="triton")


# ----------------------------------------------------------------------------- compiled, on a GPU

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("neuron,ce_mode", CASES)
def test_cuda_fused_matches_reference(neuron, ce_mode, dtype):
    x, te, alpha = inputs(neuron, dtype, T=64, B=16, N=97)
    x, te = (t.detach().cuda().requires_grad_() for t in (x, te))
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.detach().cuda().requires_grad_()
    p = dict(alpha=alpha, rho=0.9, theta0=0.3, beta=1.8, surrogate_width=0.5, ce_mode=ce_mode)
    assert_same(run("reference", x, te, neuron, p), run("fused", x, te, neuron, p), dtype)


@cuda
def test_cuda_auto_uses_triton_and_trains():
    from celif_core.models import build_model

    assert active_backend("cuda") == "fused-triton"
    spec = {"task": {"name": "adding", "seq_len": 30}, "model": {"hidden": [32, 32]}}
    model = build_model(spec).cuda()
    x = torch.rand(8, 30, 2, device="cuda")
    out = model(x)
    out.float().pow(2).mean().backward()
    assert model.backend_name == "fused"
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
