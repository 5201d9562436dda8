"""The Triton scan against the reference loop.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``), on CPU tensors:
the same kernel source, the same loads, stores, masks and arithmetic, executed by NumPy. That
checks the kernel's logic (every neuron, ce_mode, dtype, memory mode, odd sizes across program
blocks) in CI. Triton's compiler then builds every kernel variant for sm_90 and sm_80 without a
GPU (PTX and cubin), checking that they compile and contain no fused multiply-add. Neither says
anything about compiled-GPU speed. The CUDA tests at the end run the compiled kernel and are
skipped where no GPU is present. ``triton`` is a dev dependency, so a
missing install fails these tests instead of skipping them.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch
import triton

import celif_core.kernels as kernels
from celif_core.catalog import CE_TIMINGS, MEMORY_MODES
from celif_core.functional import NeuronState, active_backend, neuron_scan

from .kernel_cases import CASES, TIMED_MODES, assert_same, inputs, run

MODULE = "celif_core.kernels.scan_triton"


def _kernel_module(interpret: bool):
    """The kernel module, re-imported if needed so its kernels are interpreted (CPU tensors) or
    compiled: Triton chooses when the ``@triton.jit`` decorators run, from TRITON_INTERPRET."""
    module = importlib.import_module(MODULE)
    if module.INTERPRETED != interpret:
        if interpret:
            os.environ["TRITON_INTERPRET"] = "1"
        else:
            os.environ.pop("TRITON_INTERPRET", None)
        module = importlib.reload(module)
    assert module.INTERPRETED == interpret
    return module


@pytest.fixture(scope="module", autouse=True)
def _restore_kernel_mode():
    before = os.environ.get("TRITON_INTERPRET")
    yield
    if before is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = before
    importlib.reload(importlib.import_module(MODULE))


@pytest.fixture
def interpreter():
    return _kernel_module(interpret=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("neuron,ce_mode,ce_timing", CASES)
def test_triton_matches_reference(interpreter, neuron, ce_mode, ce_timing, detach_reset, dtype):
    x, te, alpha = inputs(neuron, dtype, T=16, B=3, N=11)
    p = dict(alpha=alpha, rho=0.9, theta0=0.3, beta=1.8, surrogate_width=0.5)
    p.update(ce_mode=ce_mode, ce_timing=ce_timing, detach_reset=detach_reset)
    assert_same(run("reference", x, te, neuron, p), run("triton", x, te, neuron, p), dtype)


@pytest.mark.parametrize("memory", MEMORY_MODES)
@pytest.mark.parametrize("ce_timing", CE_TIMINGS)
@pytest.mark.parametrize("ce_mode", ["membrane_te", "membrane", "spike"])
def test_triton_memory_modes(interpreter, ce_mode, ce_timing, memory):
    x, te, _ = inputs("celif", torch.float32, T=16, B=3, N=11, seed=1)
    p = dict(alpha=0.5, rho=0.99, theta0=0.3, surrogate_width=0.5, ce_mode=ce_mode)
    p["ce_timing"] = ce_timing
    ref = run("reference", x, te, "celif", p)
    assert_same(ref, run("triton", x, te, "celif", p, memory=memory), torch.float32)


@pytest.mark.parametrize("per_neuron", [False, True])
def test_triton_plif_alpha_gradient(interpreter, per_neuron):
    x, te, alpha = inputs("plif", torch.float64, T=16, B=3, N=11, alpha_per_neuron=per_neuron)
    p = dict(alpha=alpha, theta0=0.3, surrogate_width=0.5)
    ref, tri = run("reference", x, te, "plif", p), run("triton", x, te, "plif", p)
    assert_same(ref, tri, torch.float64)
    assert tri[1][2].shape == alpha.shape and tri[1][2].abs().sum() > 0


@pytest.mark.parametrize("ce_timing", CE_TIMINGS)
@pytest.mark.parametrize("ce_mode", TIMED_MODES)
def test_triton_blocks_and_state_carry(interpreter, ce_mode, ce_timing):
    # B*N = 300 spans three 128-element program blocks, the last one partly masked
    x, te, _ = inputs("celif", torch.float32, T=10, B=4, N=75, seed=3)
    g = torch.Generator().manual_seed(4)
    st = NeuronState(*(torch.rand(4, 75, generator=g) for _ in range(3)))
    st = st._replace(s=(st.s > 0.5).float())
    p = dict(alpha=0.5, rho=0.9, theta0=0.3, surrogate_width=0.5)
    p.update(ce_mode=ce_mode, ce_timing=ce_timing)
    r1 = neuron_scan(x, neuron="celif", params=p, te=te, state=st, backend="reference")
    r2 = neuron_scan(x, neuron="celif", params=p, te=te, state=st, backend="triton")
    assert torch.equal(r1.spikes, r2.spikes)
    for a, b in zip(r1.state, r2.state, strict=True):
        torch.testing.assert_close(a, b)
    gx1, gt1 = torch.autograd.grad(r1.spikes.sum(), [x, te], allow_unused=True)
    gx2, gt2 = torch.autograd.grad(r2.spikes.sum(), [x, te], allow_unused=True)
    if ce_mode == "membrane":  # the reference never reads te here; the kernel's grad is 0
        gt1 = torch.zeros_like(te) if gt1 is None else gt1
        gt2 = torch.zeros_like(te) if gt2 is None else gt2
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


def test_triton_on_cpu_refused_without_interpreter(compiled_module):
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


# ----------------------------------------------------------------------------- compiled, no GPU
# Triton's compiler needs no GPU to lower a kernel to PTX and assemble it (ptxas ships with the
# triton wheel): this checks what the interpreter cannot, that every variant type-checks and
# builds for the GPUs we target, and that the launch option the rounding relies on holds.


def _compile_ptx(kernel, dtype: str, constants: dict, arch: int, fp_fusion: bool = False) -> str:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*u8" if name == "code_ptr" else f"*{dtype}"
        else:
            signature[name] = "i32"
    constexprs = {(kernel.arg_names.index(k),): v for k, v in constants.items()}
    compiled = triton.compile(
        ASTSource(kernel, signature, constexprs=constexprs),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": 4, "enable_fp_fusion": fp_fusion},
    )
    assert compiled.asm.get("cubin"), "ptxas produced no binary"
    return compiled.asm["ptx"]


@pytest.fixture
def compiled_module():
    return _kernel_module(interpret=False)


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
@pytest.mark.parametrize("mode", range(8))
def test_kernels_compile_for_hopper_without_fma(compiled_module, mode, dtype):
    fwd, bwd = compiled_module._forward_kernel, compiled_module._backward_kernel
    te = mode in kernels.TE_MODE_IDS
    common = dict(MODE=mode, USES_TE=te, BLOCK=128)
    variants = [
        (fwd, dict(SAVE=True, THETA=True, **common)),
        (fwd, dict(SAVE=False, THETA=False, **common)),
        (bwd, dict(DETACH_RESET=False, NEED_TE=te, NEED_ALPHA=True, **common)),
        (bwd, dict(DETACH_RESET=True, NEED_TE=False, NEED_ALPHA=False, **common)),
    ]
    for kernel, constants in variants:
        ptx = _compile_ptx(kernel, dtype, constants, arch=90)
        # enable_fp_fusion=False must leave no fused multiply-add (it would round differently
        # from PyTorch's separate multiply and add, and spikes would stop matching the reference)
        assert "fma.rn" not in ptx, constants


def test_fp_fusion_check_can_fail(compiled_module):
    # the same backward with fusion allowed does contract into FMAs: the check above has teeth
    constants = dict(MODE=5, USES_TE=True, DETACH_RESET=False, NEED_TE=True, NEED_ALPHA=True)
    constants["BLOCK"] = 128
    ptx = _compile_ptx(compiled_module._backward_kernel, "fp32", constants, 90, fp_fusion=True)
    assert "fma.rn" in ptx


def test_kernels_compile_for_ampere(compiled_module):
    constants = dict(MODE=5, USES_TE=True, SAVE=True, THETA=False, BLOCK=128)
    assert "fma.rn" not in _compile_ptx(compiled_module._forward_kernel, "fp32", constants, 80)


# ----------------------------------------------------------------------------- compiled, on a GPU

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("neuron,ce_mode,ce_timing", CASES)
def test_cuda_fused_matches_reference(compiled_module, neuron, ce_mode, ce_timing, dtype):
    x, te, alpha = inputs(neuron, dtype, T=64, B=16, N=97)
    x, te = (t.detach().cuda().requires_grad_() for t in (x, te))
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.detach().cuda().requires_grad_()
    p = dict(alpha=alpha, rho=0.9, theta0=0.3, beta=1.8, surrogate_width=0.5, ce_mode=ce_mode)
    p["ce_timing"] = ce_timing
    assert_same(run("reference", x, te, neuron, p), run("fused", x, te, neuron, p), dtype)


@cuda
def test_cuda_auto_uses_triton_and_trains(compiled_module):
    from celif_core.models import build_model

    assert active_backend("cuda") == "fused-triton"
    spec = {"task": {"name": "adding", "seq_len": 30}, "model": {"hidden": [32, 32]}}
    model = build_model(spec.network).cuda()
    x = torch.rand(8, 30, 2, device="cuda")
    out = model(x)
    out.float().pow(2).mean().backward()
    assert model.backend_name == "fused"
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
