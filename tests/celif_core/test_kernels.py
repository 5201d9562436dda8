"""The fused CPU kernel against the reference loop: outputs, traces, final state and gradients
for every neuron, ce_mode, dtype and memory mode; its fallbacks; and CELIF_REQUIRE_FUSED.

The tests that take the ``fused_cpu`` fixture skip when the C++ extension does not build here,
naming the build error, and fail instead under ``CELIF_REQUIRE_FUSED=1`` (CI), so the fused
path cannot go unbuilt behind a green run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import celif_core.kernels as kernels
from celif_core.catalog import CE_TIMINGS, MEMORY_MODES
from celif_core.functional import CE_MODES, NeuronState, fused_available, neuron_scan

from .kernel_cases import CASES, TIMED_MODES, assert_same, inputs, require_fused_cpu, run


@pytest.fixture
def fused_cpu():
    require_fused_cpu()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("neuron,ce_mode,ce_timing", CASES)
def test_fused_matches_reference(fused_cpu, neuron, ce_mode, ce_timing, detach_reset, dtype):
    x, te, alpha = inputs(neuron, dtype)
    p = dict(alpha=alpha, rho=0.9, theta0=0.3, beta=1.8, surrogate_width=0.5)
    p.update(ce_mode=ce_mode, ce_timing=ce_timing, detach_reset=detach_reset)
    assert_same(run("reference", x, te, neuron, p), run("fused", x, te, neuron, p), dtype)


@pytest.mark.parametrize("memory", MEMORY_MODES)
@pytest.mark.parametrize("ce_timing", CE_TIMINGS)
@pytest.mark.parametrize("ce_mode", CE_MODES)
def test_recompute_memory_mode_matches(fused_cpu, ce_mode, ce_timing, memory):
    x, te, _ = inputs("celif", torch.float32, seed=1)
    p = dict(alpha=0.5, rho=0.99, theta0=0.3, surrogate_width=0.5, ce_mode=ce_mode)
    p["ce_timing"] = ce_timing
    ref = run("reference", x, te, "celif", p)
    fused = run("fused", x, te, "celif", p, memory=memory)
    assert_same(ref, fused, torch.float32)


@pytest.mark.parametrize("per_neuron", [False, True])
def test_plif_alpha_gradient_shapes(fused_cpu, per_neuron):
    x, te, alpha = inputs("plif", torch.float64, alpha_per_neuron=per_neuron, seed=2)
    p = dict(alpha=alpha, theta0=0.3, surrogate_width=0.5)
    ref, fused = run("reference", x, te, "plif", p), run("fused", x, te, "plif", p)
    assert_same(ref, fused, torch.float64)
    assert fused[1][2].shape == alpha.shape
    assert fused[1][2].abs().sum() > 0


@pytest.mark.parametrize("memory", MEMORY_MODES)
@pytest.mark.parametrize("ce_timing", CE_TIMINGS)
@pytest.mark.parametrize("ce_mode", TIMED_MODES)
def test_state_carry_and_no_grad_into_state(fused_cpu, ce_mode, ce_timing, memory):
    # a carried state (as between truncated-BPTT chunks or streamed predict calls): under
    # "previous" the first step's CE reads the state's U, so outputs and grads depend on it
    x, te, _ = inputs("celif", torch.float32, seed=3)
    g = torch.Generator().manual_seed(4)
    st = NeuronState(*(torch.rand(5, 13, generator=g).requires_grad_() for _ in range(3)))
    st = st._replace(s=(st.s > 0.5).float())
    p = dict(alpha=0.5, rho=0.9, theta0=0.3, surrogate_width=0.5)
    p.update(ce_mode=ce_mode, ce_timing=ce_timing)
    ref = run("reference", x, te, "celif", p, state=st)
    fused = run("fused", x, te, "celif", p, state=st, memory=memory)
    assert_same(ref, fused, torch.float32)
    for backend in ("reference", "fused"):
        r = neuron_scan(x, neuron="celif", params=p, te=te, state=st, backend=backend)
        r.spikes.sum().backward()
    assert all(t.grad is None for t in st)


def test_non_contiguous_input_and_no_grad(fused_cpu):
    x, te, _ = inputs("celif", torch.float32, seed=5)
    xt = x.detach().transpose(1, 2).contiguous().transpose(1, 2)  # same values, odd strides
    assert not xt.is_contiguous()
    p = dict(alpha=0.5, rho=0.9, theta0=0.3, surrogate_width=0.5)
    with torch.no_grad():
        a = neuron_scan(xt, neuron="celif", params=p, te=te, backend="fused").spikes
    b = neuron_scan(x.detach(), neuron="celif", params=p, te=te.detach(), backend="reference")
    assert torch.equal(a, b.spikes)


def test_fused_rejects_unsupported_dtype_and_auto_falls_back(fused_cpu):
    x = torch.randn(4, 2, 3, dtype=torch.bfloat16)
    p = dict(alpha=0.5, theta0=0.3, surrogate_width=0.5)
    with pytest.raises(ValueError, match="backend='fused'"):
        neuron_scan(x, neuron="lif", params=p, backend="fused")
    r = neuron_scan(x, neuron="lif", params=p)  # auto: reference for bfloat16
    assert r.spikes.dtype == torch.bfloat16


def test_disabled_by_environment_falls_back(monkeypatch):
    monkeypatch.setenv("CELIF_DISABLE_FUSED", "1")
    assert kernels.load_cpu_extension() is None
    assert "CELIF_DISABLE_FUSED" in kernels.cpu_extension_error()
    x = torch.randn(4, 2, 3)
    p = dict(alpha=0.5, theta0=0.3, surrogate_width=0.5)
    assert neuron_scan(x, neuron="lif", params=p).spikes.shape == x.shape
    with pytest.raises(ValueError, match="not available"):
        neuron_scan(x, neuron="lif", params=p, backend="fused")


def test_failed_build_logs_and_falls_back(monkeypatch, caplog):
    def broken():
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(kernels, "_build", broken)
    monkeypatch.setattr(kernels, "_state", {"tried": False, "ext": None, "error": None})
    with caplog.at_level("WARNING"):
        assert kernels.load_cpu_extension() is None
    assert "compiler exploded" in caplog.text
    assert not fused_available()
    x = torch.randn(4, 2, 3)
    r = neuron_scan(x, neuron="lif", params=dict(alpha=0.5, theta0=0.3, surrogate_width=0.5))
    assert r.spikes.shape == x.shape


def test_large_batch_odd_sizes_match(fused_cpu):
    # more batch rows than threads, N not a multiple of the vector width
    x, te, _ = inputs("celif", torch.float32, T=50, B=37, N=67, seed=6)
    p = dict(alpha=0.5, rho=0.99, theta0=0.3, surrogate_width=0.5)
    assert_same(run("reference", x, te, "celif", p), run("fused", x, te, "celif", p),
                 torch.float32)  # fmt: skip


def test_tune_allocator_applies_on_linux():
    import sys

    assert kernels.tune_allocator() is sys.platform.startswith("linux")


# --------------------------------------------------------------------------- CELIF_REQUIRE_FUSED


def _break_the_build(monkeypatch):
    def broken():
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(kernels, "_build", broken)
    monkeypatch.setattr(kernels, "_state", {"tried": False, "ext": None, "error": None})


def test_unbuilt_kernel_skips_by_default_and_fails_when_required(monkeypatch):
    _break_the_build(monkeypatch)
    monkeypatch.delenv("CELIF_REQUIRE_FUSED", raising=False)
    with pytest.raises(pytest.skip.Exception, match="compiler exploded"):
        require_fused_cpu()
    monkeypatch.setenv("CELIF_REQUIRE_FUSED", "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        require_fused_cpu()
    assert str(failed.value) == (
        "CELIF_REQUIRE_FUSED=1 but the fused CPU kernel unavailable: "
        "RuntimeError: compiler exploded"
    )
    monkeypatch.setenv("CELIF_DISABLE_FUSED", "1")  # disabling it is no way around the rule
    with pytest.raises(pytest.fail.Exception, match="disabled by CELIF_DISABLE_FUSED"):
        require_fused_cpu()


def test_required_kernel_with_a_broken_compiler_fails_the_run(tmp_path):
    # End to end, as CI would see it: a compiler that cannot run and an empty extension cache
    # make a kernel test fail under CELIF_REQUIRE_FUSED=1, and skip without it.
    repo = Path(__file__).resolve().parents[2]
    test = f"{Path(__file__).relative_to(repo)}::test_non_contiguous_input_and_no_grad"
    env = {**os.environ, "CXX": "/bin/false", "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    env.pop("CELIF_DISABLE_FUSED", None)
    runs = {}
    for required in ("1", "0"):
        env["CELIF_REQUIRE_FUSED"] = required
        runs[required] = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test],
            cwd=repo, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    failed, skipped = runs["1"], runs["0"]
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "CELIF_REQUIRE_FUSED=1 but the fused CPU kernel unavailable" in failed.stdout
    assert "1 error" in failed.stdout and "skipped" not in failed.stdout  # failed in its fixture
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "1 skipped" in skipped.stdout and "fused CPU kernel unavailable" in skipped.stdout
